//! s3ma: keep an S3-compatible bucket an exact mirror of a local directory.
//!
//! `main` only wires: parse arguments, resolve the configuration (errors
//! here are usage errors, exit 2), run the command, and map the outcome to
//! a documented exit code. The whole error chain is printed once.

mod cli;
mod config;
mod keys;
mod ls;
mod mime;
mod plan;
mod report;
mod scan;
mod state;
mod store;
mod sync;
mod transfer;
mod verify;
mod watch;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::keys::Location;
use crate::report::{Level, Reporter};
use crate::store::Store;

/// Exit codes, documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    /// Some files failed; the rest was done.
    Partial = 1,
    /// Bad arguments or configuration.
    Usage = 2,
    /// The run could not go on (unreachable endpoint, bad credentials,
    /// missing bucket, a delete guard refused).
    Fatal = 3,
    /// Another sync or watch of the same destination is running.
    Busy = 4,
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => Level::Quiet,
        (false, 0) => Level::Normal,
        (false, 1) => Level::Verbose,
        (false, _) => Level::Debug,
    };
    let progress = matches!(cli.command, Command::Sync(_));
    let rep = Arc::new(Reporter::new(level, cli.global.json, progress));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Fatal.into();
        }
    };
    let code = runtime.block_on(run(cli, rep));
    // Do not wait for blocking threads still reading files after a stop.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code.into()
}

/// Prints an error chain once and returns its exit code.
fn fail(code: Exit, err: anyhow::Error) -> Exit {
    eprintln!("error: {err:#}");
    code
}

async fn run(cli: Cli, rep: Arc<Reporter>) -> Exit {
    let loaded = match config::load(cli.global.config.as_deref()) {
        Ok(l) => l,
        Err(e) => return fail(Exit::Usage, e),
    };
    for w in &loaded.warnings {
        rep.warn(w);
    }
    match cli.command {
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "s3ma", &mut std::io::stdout());
            Exit::Success
        }
        Command::Ls(args) => {
            let (conn, loc) = match ls_target(&args, &loaded) {
                Ok(v) => v,
                Err(e) => return fail(Exit::Usage, e),
            };
            let result: Result<()> = async {
                let store = Store::connect(&conn).await?;
                match loc {
                    None => ls::buckets(&store, cli.global.json).await,
                    Some(loc) => {
                        let target = args.target.clone().unwrap_or_else(|| loc.to_string());
                        ls::objects(&store, &loc, &target, args.recursive, cli.global.json).await
                    }
                }
            }
            .await;
            match result {
                Ok(()) => Exit::Success,
                // `s3ma ls | head`: the reader has seen enough.
                Err(e) if is_broken_pipe(&e) => Exit::Success,
                Err(e) => fail(Exit::Fatal, e),
            }
        }
        Command::Watch(args) => watch(args, &loaded, rep).await,
        Command::Sync(args) => sync(args, &loaded, rep).await,
        Command::Verify(args) => verify(args, &loaded, rep).await,
    }
}

/// What `s3ma ls` lists, and through which connection: a configured
/// destination's own when `--destination` names it or the target is in its
/// bucket.
fn ls_target(
    args: &cli::LsArgs,
    loaded: &config::Loaded,
) -> Result<(config::Connection, Option<Location>)> {
    let file = &loaded.file;
    let conn = config::resolve_connection(&args.conn, file)?;
    let loc = args.target.as_deref().map(Location::parse).transpose()?;
    let primary = match &file.bucket {
        Some(b) => Location::new(b, file.top_prefix.as_deref().unwrap_or(""))?,
        None => Location::default(),
    };
    let elsewhere = loc.as_ref().is_some_and(|l| l.bucket != primary.bucket);
    if args.destination.is_none() && !elsewhere {
        return Ok((conn, loc));
    }
    let dests = config::resolve_destinations(&conn, &primary, file)?;
    if let Some(name) = &args.destination {
        let Some(d) = dests
            .iter()
            .find(|d| d.name == *name)
            .or_else(|| dests.iter().find(|d| d.dest.bucket == *name))
        else {
            let names: Vec<&str> = dests.iter().map(|d| d.name.as_str()).collect();
            anyhow::bail!(
                "no destination named \"{name}\" in the config file (it has: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            );
        };
        return Ok((d.conn.clone(), Some(loc.unwrap_or_else(|| d.dest.clone()))));
    }
    if let Some(l) = &loc {
        if l.bucket != primary.bucket {
            if let Some(d) = dests.iter().find(|d| d.dest.bucket == l.bucket) {
                return Ok((d.conn.clone(), loc));
            }
        }
    }
    Ok((conn, loc))
}

/// One (directory, destination) pair to mirror, and who reports on it.
struct Target<C> {
    cfg: C,
    conn: config::Connection,
    rep: Arc<Reporter>,
}

/// The primary first, then every further destination, each with its own
/// reporter. The config's further destinations go with its own bucket:
/// they are left out with `--primary-only`, and when the command line
/// names another destination than the config's `bucket` and `topPrefix`
/// (a one-off run must not mirror another directory into them, with
/// deletions).
fn targets<C>(
    primary: C,
    conn: config::Connection,
    rep: &Arc<Reporter>,
    loaded: &config::Loaded,
    mirror: &cli::MirrorArgs,
    sync_of: impl Fn(&C) -> &config::SyncConfig,
    derive: impl Fn(&C, config::SyncConfig) -> C,
) -> Result<Vec<Target<C>>> {
    let file = &loaded.file;
    let configured = file.bucket_sync.is_some() || file.destinations.is_some();
    let elsewhere = match &file.bucket {
        Some(bucket) => {
            let own = Location::new(bucket, file.top_prefix.as_deref().unwrap_or(""))?;
            sync_of(&primary).dest != own
        }
        // No primary in the file: its destinations go with the one given.
        None => false,
    };
    let dests = if mirror.primary_only || !configured {
        Vec::new()
    } else if elsewhere {
        rep.warn(
            "the config file's further destinations (bucketSync, destinations) go with its \
             own bucket and topPrefix; with another destination on the command line they \
             are left out",
        );
        Vec::new()
    } else {
        config::resolve_destinations(&conn, &sync_of(&primary).dest, file)?
    };
    let mut out = Vec::with_capacity(1 + dests.len());
    for d in dests {
        let cfg = derive(&primary, d.sync_config(sync_of(&primary), &conn));
        out.push(Target {
            cfg,
            conn: d.conn,
            rep: Arc::new(rep.for_destination(&d.name)),
        });
    }
    out.insert(
        0,
        Target {
            cfg: primary,
            conn,
            rep: rep.clone(),
        },
    );
    Ok(out)
}

/// The exit code for several targets: the most serious outcome wins.
fn worst(exits: impl IntoIterator<Item = Exit>) -> Exit {
    let rank = |e: &Exit| match e {
        Exit::Success => 0,
        Exit::Partial => 1,
        Exit::Busy => 2,
        Exit::Fatal => 3,
        Exit::Usage => 4,
        Exit::Interrupted => 5,
    };
    exits.into_iter().max_by_key(rank).unwrap_or(Exit::Success)
}

const BUSY: &str = "another s3ma sync or watch of this destination is already running";

/// `s3ma sync`: the primary first (so further destinations on its service
/// can copy from it), then the further destinations side by side; each
/// has its own state, and one failing does not stop the others.
async fn sync(args: cli::SyncArgs, loaded: &config::Loaded, rep: Arc<Reporter>) -> Exit {
    let resolved = config::resolve_connection(&args.mirror.conn, &loaded.file).and_then(|conn| {
        let cfg = config::resolve_sync(&args.mirror, args.dry_run, loaded)?;
        targets(cfg, conn, &rep, loaded, &args.mirror, |c| c, |_, c| c)
    });
    let mut all = match resolved {
        Ok(v) => v,
        Err(e) => return fail(Exit::Usage, e),
    };
    let stop = Arc::new(sync::Stop::default());
    spawn_signal_handler(stop.clone(), rep.clone());
    let primary = all.remove(0);
    let mut exits = vec![sync_one(primary, stop.clone()).await];
    let mut rest = tokio::task::JoinSet::new();
    for t in all {
        rest.spawn(sync_one(t, stop.clone()));
    }
    while let Some(done) = rest.join_next().await {
        exits.push(
            done.unwrap_or_else(|e| fail(Exit::Fatal, anyhow::anyhow!("a sync task failed: {e}"))),
        );
    }
    worst(exits)
}

async fn sync_one(t: Target<config::SyncConfig>, stop: Arc<sync::Stop>) -> Exit {
    let dry_run = t.cfg.dry_run;
    let rep = t.rep;
    rep.start_clock();
    match sync::run(t.cfg, &t.conn, rep.clone(), stop).await {
        Ok(sync::Status::Busy(lock)) => {
            rep.fatal(&format!("{BUSY} (lock {lock}); this run did nothing"));
            Exit::Busy
        }
        Ok(status) => {
            rep.summary(dry_run);
            match status {
                sync::Status::Done => Exit::Success,
                sync::Status::Interrupted => Exit::Interrupted,
                _ => Exit::Partial,
            }
        }
        Err(e) => {
            if report::get(&rep.counts.scanned) > 0 {
                rep.summary(dry_run);
            }
            rep.fatal(&format!("{e:#}"));
            Exit::Fatal
        }
    }
}

/// `s3ma verify`: the primary, then every further destination; exit 0 when
/// each is an exact mirror, 1 when any differs, 3 when one cannot be
/// compared.
async fn verify(args: cli::VerifyArgs, loaded: &config::Loaded, rep: Arc<Reporter>) -> Exit {
    let download = args.download;
    let mirror = args.mirror();
    let resolved = config::resolve_connection(&mirror.conn, &loaded.file).and_then(|conn| {
        let cfg = config::resolve_sync(&mirror, false, loaded)?;
        targets(cfg, conn, &rep, loaded, &mirror, |c| c, |_, c| c)
    });
    let all = match resolved {
        Ok(v) => v,
        Err(e) => return fail(Exit::Usage, e),
    };
    let stop = Arc::new(sync::Stop::default());
    spawn_signal_handler(stop.clone(), rep.clone());
    let mut exits = Vec::new();
    for t in all {
        let exit = match verify::run(&t.cfg, &t.conn, &t.rep, download, &stop).await {
            Ok(found) if found.clean() => Exit::Success,
            Ok(_) => Exit::Partial,
            Err(_) if stop.requested() => Exit::Interrupted,
            Err(e) => {
                t.rep.fatal(&format!("{e:#}"));
                Exit::Fatal
            }
        };
        exits.push(exit);
    }
    worst(exits)
}

/// `s3ma watch`: one daemon per destination, each with its own watches,
/// journal and retries, so a destination that is down never holds up the
/// others. Runs until stopped; a stop by signal is a normal exit. A
/// destination that cannot start (bad configuration) stops them all.
async fn watch(args: cli::WatchArgs, loaded: &config::Loaded, rep: Arc<Reporter>) -> Exit {
    let resolved = config::resolve_connection(&args.mirror.conn, &loaded.file).and_then(|conn| {
        let cfg = config::resolve_watch(&args, loaded)?;
        targets(
            cfg,
            conn,
            &rep,
            loaded,
            &args.mirror,
            |c| &c.sync,
            |w, sync| config::WatchConfig { sync, ..w.clone() },
        )
    });
    let all = match resolved {
        Ok(v) => v,
        Err(e) => return fail(Exit::Usage, e),
    };
    let stop = Arc::new(sync::Stop::default());
    spawn_signal_handler(stop.clone(), rep.clone());
    let mut daemons = tokio::task::JoinSet::new();
    let (primary_done, primary_ready) = tokio::sync::watch::channel(false);
    let mut primary_done = Some(primary_done);
    for t in all {
        let stop = stop.clone();
        let is_primary = primary_done.is_some();
        let first = match primary_done.take() {
            Some(done) => watch::First::Primary(done),
            None if t.cfg.sync.copy_from.is_some() => {
                watch::First::AfterPrimary(primary_ready.clone())
            }
            None => watch::First::Independent,
        };
        daemons.spawn(async move {
            let exit = match watch::run(t.cfg, &t.conn, t.rep.clone(), stop, first).await {
                Ok(sync::Status::Busy(lock)) => {
                    t.rep
                        .fatal(&format!("{BUSY} (lock {lock}); this one did nothing"));
                    Exit::Busy
                }
                Ok(_) => Exit::Success,
                Err(e) => {
                    t.rep.fatal(&format!("{e:#}"));
                    Exit::Fatal
                }
            };
            (is_primary, exit)
        });
    }
    let mut exits = Vec::new();
    while let Some(done) = daemons.join_next().await {
        let (is_primary, exit) = done.unwrap_or_else(|e| {
            (
                true,
                fail(Exit::Fatal, anyhow::anyhow!("a watch task failed: {e}")),
            )
        });
        // Without the primary there is nothing to watch for; a further
        // destination that cannot go on leaves the others running.
        if is_primary && exit != Exit::Success && !stop.requested() {
            stop.request();
        }
        exits.push(exit);
    }
    worst(exits)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// First SIGINT/SIGTERM: stop taking work, finish what is in flight, save
/// state. Second: exit 130 at once.
fn spawn_signal_handler(stop: Arc<sync::Stop>, rep: Arc<Reporter>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if stop.requested() {
                eprintln!("interrupted again: exiting now");
                std::process::exit(Exit::Interrupted as i32);
            }
            rep.warn("interrupted: finishing uploads in flight and saving state (interrupt again to exit now)");
            stop.request();
        }
    });
}
