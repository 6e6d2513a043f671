//! Configuration: the command line, one snapshot of the environment and
//! the config file, resolved once into a plain [`Config`] with no clap
//! types in it. Flags win over the environment, the environment over the
//! file, the file over the defaults.
//!
//! Every mistake a user can make in any of them is found here, before any
//! request or any change, and is a usage error (exit 2) that says what to
//! write instead. Split by concern:
//! - [`file`]: the config file's schema (node-s3ma's `conf/config.json`);
//! - [`units`]: sizes and durations;
//! - [`connection`]: endpoint, region, credentials, TLS, timeouts;
//! - [`destinations`]: `bucketSync` and the `destinations` list;
//! - [`mirror`]: the directory, filters, transfer and `watch` settings;
//! - [`env`]: the environment variables s3ma reads.

mod connection;
mod destinations;
mod env;
mod file;
mod mirror;
mod units;

use anyhow::{bail, Context, Result};

pub use connection::Connection;
pub use env::Env;
pub use mirror::{Backup, FilterConfig, SyncConfig, TransferConfig, WatchConfig, WatchTiming};
pub use units::parse_size;

use crate::cli::{Cli, Command, ConnectionArgs, LsArgs};
use crate::keys::{bucket_name_problem, Location};
use file::Loaded;
use mirror::Choices;

/// What to run, fully resolved.
#[derive(Debug)]
pub enum Config {
    Sync(Targets),
    Verify {
        targets: Targets,
        download: bool,
    },
    Watch {
        targets: Targets,
        timing: WatchTiming,
    },
    Ls(Box<Ls>),
    Restore(Box<Restore>),
    Status(Targets),
    Completions(clap_complete::Shell),
}

/// The primary destination first, then every further one.
pub type Targets = Vec<Target>;

/// One destination of the mirrored directory, and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `None` for the primary; a further destination's name, shown before
    /// its lines.
    pub name: Option<String>,
    pub sync: SyncConfig,
    pub conn: Connection,
}

/// What `s3ma ls` lists and through which connection.
#[derive(Debug)]
pub struct Ls {
    pub conn: Connection,
    /// `None` lists the buckets.
    pub location: Option<Location>,
    /// The location as the user wrote it, for messages.
    pub shown: String,
    pub recursive: bool,
    /// `--at`: the objects as they were then.
    pub at: Option<std::time::SystemTime>,
    /// `--versions`: every version and delete marker.
    pub versions: bool,
}

/// What `s3ma restore` brings back, from where, and how.
#[derive(Debug)]
pub struct Restore {
    pub conn: Connection,
    pub from: Location,
    pub dir: std::path::PathBuf,
    /// `--at`: the tree as it was then (from the versions).
    pub at: Option<std::time::SystemTime>,
    pub delete: bool,
    pub max_delete: Option<u64>,
    pub checksum: bool,
    pub dry_run: bool,
    /// Concurrency, the ranged-GET threshold and size, SSE-C.
    pub transfer: TransferConfig,
    /// What `--delete` leaves alone: what sync would not mirror.
    pub filter: FilterConfig,
}

/// A resolved configuration and the warnings met on the way.
#[derive(Debug)]
pub struct Resolved {
    pub config: Config,
    pub metrics: Metrics,
    pub warnings: Vec<String>,
}

/// Where metrics go, if anywhere.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `watch` serves them here.
    pub addr: Option<std::net::SocketAddr>,
    /// Written here (atomically).
    pub file: Option<std::path::PathBuf>,
}

/// `--metrics-addr` / `--metrics-file`, else the file's keys.
fn metrics(cli: &Cli, file: &file::FileConfig) -> Result<Metrics> {
    let (addr, path) = match &cli.command {
        Command::Watch(a) => (a.metrics_addr.clone(), a.mirror.metrics_file.clone()),
        Command::Sync(a) => (None, a.mirror.metrics_file.clone()),
        _ => return Ok(Metrics::default()),
    };
    let is_watch = matches!(cli.command, Command::Watch(_));
    let addr = addr.or_else(|| file.metrics_addr.clone().filter(|_| is_watch));
    let addr = addr
        .map(|a| {
            a.parse::<std::net::SocketAddr>().with_context(|| {
                format!(
                    "--metrics-addr '{a}' is not an address and port, such as 127.0.0.1:9464 or \
                     [::1]:9464"
                )
            })
        })
        .transpose()?;
    let file = path.or_else(|| file.metrics_file.clone());
    if let Some(dir) = file
        .as_deref()
        .and_then(|p| p.parent())
        .filter(|d| !d.as_os_str().is_empty())
    {
        if !dir.is_dir() {
            bail!(
                "the metrics file's directory {} does not exist; give --metrics-file a path in \
                 an existing directory",
                dir.display()
            );
        }
    }
    Ok(Metrics { addr, file })
}

impl Config {
    /// The destinations a mirror command runs on.
    pub fn targets_mut(&mut self) -> Option<&mut Targets> {
        match self {
            Config::Sync(t) | Config::Status(t) => Some(t),
            Config::Verify { targets, .. } | Config::Watch { targets, .. } => Some(targets),
            Config::Ls(_) | Config::Restore(_) | Config::Completions(_) => None,
        }
    }

    /// Resolves a parsed command line. Errors are usage errors (exit 2).
    pub fn from_cli(cli: &Cli, env: &Env) -> Result<Resolved> {
        if let Command::Completions { shell } = &cli.command {
            return Ok(Resolved {
                config: Config::Completions(*shell),
                metrics: Metrics::default(),
                warnings: Vec::new(),
            });
        }
        let loaded = file::load(cli.global.config.as_deref())?;
        let mut warnings = loaded.warnings.clone();
        // `-vv` (and not `-q`): every connection logs its requests.
        let log = !cli.global.quiet && cli.global.verbose >= 2;
        let config = match &cli.command {
            Command::Sync(a) => {
                let m = &a.mirror;
                let choices = Choices::of(m, a.dry_run);
                Config::Sync(targets(
                    &choices,
                    &m.conn,
                    m.primary_only,
                    &loaded,
                    env,
                    log,
                    &mut warnings,
                )?)
            }
            Command::Watch(a) => {
                let m = &a.mirror;
                let choices = Choices::of(m, false);
                Config::Watch {
                    timing: mirror::resolve_timing(a, &loaded.file)?,
                    targets: targets(
                        &choices,
                        &m.conn,
                        m.primary_only,
                        &loaded,
                        env,
                        log,
                        &mut warnings,
                    )?,
                }
            }
            Command::Verify(a) => {
                let transfer = crate::cli::TransferArgs {
                    concurrency: a.concurrency,
                    header: a.header.clone(),
                    sse: a.sse.clone(),
                    sse_c_key_file: a.sse_c_key_file.clone(),
                    ..Default::default()
                };
                let choices = Choices::reading(&a.paths, &a.filter, &transfer);
                Config::Verify {
                    targets: targets(
                        &choices,
                        &a.conn,
                        a.primary_only,
                        &loaded,
                        env,
                        log,
                        &mut warnings,
                    )?,
                    download: a.download,
                }
            }
            Command::Status(a) => {
                let transfer = crate::cli::TransferArgs {
                    state_dir: a.state_dir.clone(),
                    ..Default::default()
                };
                let filter = crate::cli::FilterArgs::default();
                let choices = Choices::reading(&a.paths, &filter, &transfer);
                Config::Status(targets(
                    &choices,
                    &a.conn,
                    a.primary_only,
                    &loaded,
                    env,
                    log,
                    &mut warnings,
                )?)
            }
            Command::Ls(a) => Config::Ls(Box::new(ls(a, &loaded, env, log)?)),
            Command::Restore(a) => Config::Restore(Box::new(restore(a, &loaded, env, log)?)),
            Command::Completions { shell } => Config::Completions(*shell),
        };
        Ok(Resolved {
            metrics: metrics(cli, &loaded.file)?,
            config,
            warnings,
        })
    }
}

/// The primary first, then every further destination. The config's
/// further destinations go with its own bucket: they are left out with
/// `--primary-only`, and when the command line names another destination
/// than the config's `bucket` and `topPrefix` (a one-off run must not
/// mirror another directory into them, with deletions).
fn targets(
    choices: &Choices,
    conn_args: &ConnectionArgs,
    primary_only: bool,
    loaded: &Loaded,
    env: &Env,
    log_requests: bool,
    warnings: &mut Vec<String>,
) -> Result<Targets> {
    let file = &loaded.file;
    let conn = connection::resolve(conn_args, loaded, env, log_requests)?;
    let sync = mirror::resolve_sync(choices, loaded, env)?;
    check_bucket(&sync.dest, &conn)?;
    check_storage_class(sync.transfer.storage_class.as_deref(), &conn)?;
    for (pattern, class) in sync.transfer.headers.storage_classes() {
        check_storage_class(Some(class), &conn)
            .with_context(|| format!("in the header rule for '{pattern}'"))?;
    }
    if let Some(b) = &sync.transfer.backup {
        check_bucket(&b.at, &conn)?;
        b.check_apart(&sync.dest)?;
    }
    let configured = file.bucket_sync.is_some() || file.destinations.is_some();
    let elsewhere = match mirror::primary_of(file)? {
        Some(own) => sync.dest != own,
        // No primary in the file: its destinations go with the one given.
        None => false,
    };
    let dests = if primary_only || !configured {
        Vec::new()
    } else if elsewhere {
        warnings.push(
            "the config file's further destinations (bucketSync, destinations) go with its \
             own bucket and topPrefix; with another destination on the command line they are \
             left out"
                .into(),
        );
        Vec::new()
    } else {
        destinations::resolve(&conn, &sync.dest, file, env)?
    };
    let mut out = Vec::with_capacity(1 + dests.len());
    for d in dests {
        check_bucket(&d.dest, &d.conn)
            .and_then(|()| check_storage_class(d.storage_class.as_deref(), &d.conn))
            .with_context(|| format!("in destination \"{}\"", d.name))?;
        let mut cfg = sync.clone();
        cfg.dest = d.dest.clone();
        if d.storage_class.is_some() {
            cfg.transfer.storage_class = d.storage_class.clone();
        }
        if d.bwlimit.is_some() {
            cfg.transfer.bwlimit = d.bwlimit.clone();
        }
        // The primary's backup is on the primary's service: a destination
        // keeps its objects only where it says.
        cfg.transfer.backup = d.backup.clone();
        if let Some(b) = &cfg.transfer.backup {
            check_bucket(&b.at, &d.conn)
                .and_then(|()| b.check_apart(&d.dest))
                .with_context(|| format!("in destination \"{}\"", d.name))?;
        }
        cfg.copy_from = d
            .copy_from_primary
            .then(|| (sync.dest.clone(), conn.clone()));
        out.push(Target {
            name: Some(d.name),
            sync: cfg,
            conn: d.conn,
        });
    }
    out.insert(
        0,
        Target {
            name: None,
            sync,
            conn,
        },
    );
    Ok(out)
}

/// AWS's bucket name rules on AWS, and wherever the bucket becomes a host
/// name (virtual-host addressing); elsewhere only what cannot work in a
/// path-style URL, which [`Location`] already refuses.
fn check_bucket(loc: &Location, conn: &Connection) -> Result<()> {
    let on = if conn.is_aws() {
        "AWS S3"
    } else if !conn.path_style {
        "a virtual-host endpoint (the bucket becomes a host name)"
    } else {
        return Ok(());
    };
    if let Some(problem) = bucket_name_problem(&loc.bucket) {
        bail!(
            "'{}' is not a valid bucket name on {on}: {problem}; see \
             https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html",
            loc.bucket
        );
    }
    Ok(())
}

/// The storage classes AWS S3 takes on PutObject.
const AWS_STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
    "FSX_OPENZFS",
];

/// On AWS, a storage class it does not know fails every upload: found
/// here instead. Other providers name their own classes; one they refuse
/// stops the run at the first upload.
fn check_storage_class(class: Option<&str>, conn: &Connection) -> Result<()> {
    let Some(class) = class.filter(|_| conn.is_aws()) else {
        return Ok(());
    };
    if AWS_STORAGE_CLASSES.contains(&class) {
        return Ok(());
    }
    let hint = match file::did_you_mean(class, AWS_STORAGE_CLASSES) {
        Some(s) => format!("did you mean {s}?"),
        None => format!("AWS S3 takes {}", AWS_STORAGE_CLASSES.join(", ")),
    };
    bail!("'{class}' is not an AWS S3 storage class; {hint}")
}

/// What `s3ma ls` lists, and through which connection: a configured
/// destination's own when `--destination` names it or the target is in its
/// bucket.
fn ls(args: &LsArgs, loaded: &Loaded, env: &Env, log_requests: bool) -> Result<Ls> {
    if args.target.is_none() && args.destination.is_none() && (args.at.is_some() || args.versions) {
        bail!("--at and --versions list objects: give s3://BUCKET/PREFIX");
    }
    let (conn, location) = pick(
        &args.conn,
        args.target.as_deref(),
        args.destination.as_deref(),
        loaded,
        env,
        log_requests,
    )?;
    Ok(Ls {
        shown: args
            .target
            .clone()
            .or_else(|| location.as_ref().map(ToString::to_string))
            .unwrap_or_default(),
        conn,
        location,
        recursive: args.recursive || args.at.is_some(),
        at: args.at.as_deref().map(parse_at).transpose()?,
        versions: args.versions,
    })
}

/// `--at`: an RFC 3339 time (any offset; one to the second stands for
/// the whole second), or an age before now (`2h`, `3d`). A time to come
/// is refused: there is no tree of it yet.
pub fn parse_at(s: &str) -> Result<std::time::SystemTime> {
    let t = at_time(s)?;
    if t > std::time::SystemTime::now() + std::time::Duration::from_secs(1) {
        bail!(
            "--at {s} is in the future: there is no tree of it yet (give a past time, or an \
             age such as 2h)"
        );
    }
    Ok(t)
}

fn at_time(s: &str) -> Result<std::time::SystemTime> {
    use aws_smithy_types::date_time::{DateTime, Format};
    let upper = s.trim().to_ascii_uppercase();
    // An offset (+02:00, -00:00) names the same instant in UTC.
    let split = upper
        .len()
        .checked_sub(6)
        .filter(|i| upper.is_char_boundary(*i));
    let (base, offset) = match split.map(|i| upper.split_at(i)) {
        Some((base, off))
            if base.contains('T')
                && (off.starts_with('+') || off.starts_with('-'))
                && off.as_bytes()[3] == b':' =>
        {
            let h: i64 = off[1..3].parse().unwrap_or(99);
            let m: i64 = off[4..6].parse().unwrap_or(99);
            let secs = (h < 24 && m < 60).then_some(h * 3600 + m * 60);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            (format!("{base}Z"), secs.map(|s| s * sign))
        }
        _ => (upper.clone(), Some(0)),
    };
    if let (Some(offset), Ok(d)) = (offset, DateTime::from_str(&base, Format::DateTime)) {
        // A time to the second is that whole second: what was written
        // within it (servers keep milliseconds) is part of the tree then.
        let nanos = if base.contains('.') {
            d.subsec_nanos()
        } else {
            999_999_999
        };
        let utc = DateTime::from_secs_and_nanos(d.secs() - offset, nanos);
        return std::time::SystemTime::try_from(utc)
            .map_err(|_| anyhow::anyhow!("--at {s}: out of range"));
    }
    let age = units::parse_duration(s).map_err(|_| {
        anyhow::anyhow!(
            "--at '{s}' is neither a time in RFC 3339 (2026-11-30T18:00:00Z) nor an age (90m, \
             2h, 3d)"
        )
    })?;
    std::time::SystemTime::now()
        .checked_sub(age)
        .ok_or_else(|| anyhow::anyhow!("--at {s}: out of range"))
}

fn restore(
    args: &crate::cli::RestoreArgs,
    loaded: &Loaded,
    env: &Env,
    log_requests: bool,
) -> Result<Restore> {
    let (source, dir) = match args.paths.as_slice() {
        [dir] if !dir.starts_with("s3://") => (None, dir),
        [source, dir] if source.starts_with("s3://") && !dir.starts_with("s3://") => {
            (Some(source.as_str()), dir)
        }
        _ => bail!(
            "give the mirror, then the directory to restore into: s3ma restore \
             s3://BUCKET/PREFIX DIR (or only DIR, for the config's bucket and topPrefix or \
             --destination's)"
        ),
    };
    let (conn, from) = pick(
        &args.conn,
        source,
        args.destination.as_deref(),
        loaded,
        env,
        log_requests,
    )?;
    let from = match from {
        Some(l) => l,
        None => mirror::primary_of(&loaded.file)?.ok_or_else(|| {
            anyhow::anyhow!(
                "no mirror to restore from: give s3://BUCKET/PREFIX before the directory, or a \
                 config file with a bucket"
            )
        })?,
    };
    check_bucket(&from, &conn)?;
    let dir = std::path::PathBuf::from(dir);
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{} is not a directory; restore into a directory",
            dir.display()
        );
    }
    if !dir.exists() && dir.is_symlink() {
        bail!(
            "{} is a symbolic link to nothing; restore into a directory",
            dir.display()
        );
    }
    if args.max_delete.is_some() && !args.delete {
        bail!("--max-delete goes with --delete");
    }
    let transfer = mirror::transfer(
        &crate::cli::TransferArgs {
            concurrency: args.concurrency,
            multipart_threshold: args.multipart_threshold.clone(),
            multipart_chunk_size: args.multipart_chunk_size.clone(),
            sse_c_key_file: args.sse_c_key_file.clone(),
            ..Default::default()
        },
        loaded,
    )?;
    Ok(Restore {
        conn,
        from,
        dir,
        at: args.at.as_deref().map(parse_at).transpose()?,
        delete: args.delete,
        max_delete: args.max_delete,
        checksum: args.checksum,
        dry_run: args.dry_run,
        transfer,
        filter: mirror::filter(&crate::cli::FilterArgs::default(), &loaded.file)?,
    })
}

/// The connection and location a command that names one location reads:
/// the one given (through its destination's connection when it is one of
/// the config's further destinations), or `--destination`'s.
fn pick(
    conn_args: &ConnectionArgs,
    target: Option<&str>,
    destination: Option<&str>,
    loaded: &Loaded,
    env: &Env,
    log_requests: bool,
) -> Result<(Connection, Option<Location>)> {
    let file = &loaded.file;
    let conn = connection::resolve(conn_args, loaded, env, log_requests)?;
    let loc = target.map(Location::parse).transpose()?;
    let primary = mirror::primary_of(file)?.unwrap_or_default();
    let elsewhere = loc.as_ref().is_some_and(|l| l.bucket != primary.bucket);
    let (conn, location) = if destination.is_none() && !elsewhere {
        (conn, loc)
    } else {
        let dests = destinations::resolve(&conn, &primary, file, env)?;
        match destination {
            Some(name) => {
                let Some(d) = dests
                    .iter()
                    .find(|d| d.name == *name)
                    .or_else(|| dests.iter().find(|d| d.dest.bucket == *name))
                else {
                    let names: Vec<&str> = dests.iter().map(|d| d.name.as_str()).collect();
                    bail!(
                        "no destination named \"{name}\" in the config file (it has: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    );
                };
                (d.conn.clone(), Some(loc.unwrap_or_else(|| d.dest.clone())))
            }
            None => {
                let own = loc
                    .as_ref()
                    .and_then(|l| dests.iter().find(|d| d.dest.bucket == l.bucket));
                (own.map_or(conn, |d| d.conn.clone()), loc)
            }
        }
    };
    if let Some(l) = &location {
        check_bucket(l, &conn)?;
    }
    Ok((conn, location))
}

#[cfg(test)]
mod tests;
