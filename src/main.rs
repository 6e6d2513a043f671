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
    /// Another sync of the same directory and destination is running.
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
            let resolved = config::resolve_connection(&args.conn, &loaded.file).and_then(|c| {
                let loc = args.target.as_deref().map(Location::parse).transpose()?;
                Ok((c, loc))
            });
            let (conn, loc) = match resolved {
                Ok(v) => v,
                Err(e) => return fail(Exit::Usage, e),
            };
            let result: Result<()> = async {
                let store = Store::connect(&conn).await?;
                match loc {
                    None => ls::buckets(&store, cli.global.json).await,
                    Some(loc) => {
                        let target = args.target.as_deref().unwrap_or_default();
                        ls::objects(&store, &loc, target, args.recursive, cli.global.json).await
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
        Command::Sync(args) => {
            let resolved =
                config::resolve_connection(&args.mirror.conn, &loaded.file).and_then(|c| {
                    Ok((
                        c,
                        config::resolve_sync(&args.mirror, args.dry_run, &loaded)?,
                    ))
                });
            let (conn, cfg) = match resolved {
                Ok(v) => v,
                Err(e) => return fail(Exit::Usage, e),
            };
            let dry_run = cfg.dry_run;
            let stop = Arc::new(sync::Stop::default());
            spawn_signal_handler(stop.clone(), rep.clone());
            match sync::run(cfg, &conn, rep.clone(), stop).await {
                Ok(sync::Status::Busy(lock)) => {
                    eprintln!(
                        "error: another s3ma sync or watch of this directory and destination is already \
                         running (lock {lock}); this run did nothing"
                    );
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
                    if rep
                        .counts
                        .scanned
                        .load(std::sync::atomic::Ordering::Relaxed)
                        > 0
                    {
                        rep.summary(dry_run);
                    }
                    fail(Exit::Fatal, e)
                }
            }
        }
    }
}

/// `s3ma watch`: runs until stopped; a stop by signal is a normal exit.
async fn watch(args: cli::WatchArgs, loaded: &config::Loaded, rep: Arc<Reporter>) -> Exit {
    let resolved = config::resolve_connection(&args.mirror.conn, &loaded.file)
        .and_then(|c| Ok((c, config::resolve_watch(&args, loaded)?)));
    let (conn, cfg) = match resolved {
        Ok(v) => v,
        Err(e) => return fail(Exit::Usage, e),
    };
    let stop = Arc::new(sync::Stop::default());
    spawn_signal_handler(stop.clone(), rep.clone());
    match watch::run(cfg, &conn, rep, stop).await {
        Ok(sync::Status::Busy(lock)) => {
            eprintln!(
                "error: another s3ma sync or watch of this directory and destination is already \
                 running (lock {lock}); this one did nothing"
            );
            Exit::Busy
        }
        Ok(_) => Exit::Success,
        Err(e) => fail(Exit::Fatal, e),
    }
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
