//! s3ma: keep an S3-compatible bucket an exact mirror of a local directory.
//!
//! `main` only wires: parse arguments, resolve them with the environment
//! and the config file into a [`Config`] (errors there are usage errors,
//! exit 2), run the command, and map the outcome to a documented exit
//! code. The whole error chain is printed once.

mod attrs;
mod batch;
mod bwlimit;
mod checksum;
mod cli;
mod config;
mod headers;
mod keys;
mod limits;
mod ls;
mod metrics;
mod mime;
mod pace;
mod plan;
mod pulse;
mod report;
mod restore;
mod scan;
mod state;
mod status;
mod store;
mod sync;
mod transfer;
mod verify;
mod watch;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::{CommandFactory, Parser};

use crate::cli::Cli;
use crate::config::{Config, Env, Target};
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
    // An empty variable is an unset one, as for the AWS variables (a
    // systemd `Environment=S3MA_CONFIG=` line), not an empty flag value.
    for name in ["S3MA_CONFIG", "S3MA_STATE_DIR"] {
        if std::env::var_os(name).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(name);
        }
    }
    let cli = Cli::parse();
    // What s3ma keeps of its own (state, journal) is the user's alone; a
    // restore writes the user's files, under the user's umask.
    if !matches!(cli.command, cli::Command::Restore(_)) {
        limits::private_files();
    }
    let level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => Level::Quiet,
        (false, 0) => Level::Normal,
        (false, 1) => Level::Verbose,
        (false, _) => Level::Debug,
    };
    let progress = matches!(
        cli.command,
        cli::Command::Sync(_) | cli::Command::Restore(_)
    );
    let timestamps = cli.global.log_timestamps
        || (matches!(cli.command, cli::Command::Watch(_)) && limits::stamps_wanted());
    let rep = Arc::new(Reporter::new(level, cli.global.json, progress).with_timestamps(timestamps));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            report::say(&format!("error: cannot start the async runtime: {e}"));
            return Exit::Fatal.into();
        }
    };
    let code = runtime.block_on(run(cli, rep));
    // Do not wait for blocking threads still reading files after a stop.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code.into()
}

/// Prints an error chain once (as a JSON object on stdout too, with
/// `--json`) and returns its exit code.
fn fail(rep: &Reporter, code: Exit, err: anyhow::Error) -> Exit {
    rep.fatal(&format!("{err:#}"));
    code
}

async fn run(cli: Cli, rep: Arc<Reporter>) -> Exit {
    let mut resolved = match Config::from_cli(&cli, &Env::capture()) {
        Ok(r) => r,
        Err(e) => return fail(&rep, Exit::Usage, e),
    };
    if let Some(t) = resolved.config.targets_mut() {
        resolved.warnings.extend(limits::fit_open_files(t));
    }
    for w in &resolved.warnings {
        rep.warn(w);
    }
    match resolved.config {
        Config::Completions(shell) => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "s3ma", &mut std::io::stdout());
            Exit::Success
        }
        Config::Ls(ls) => {
            let result: Result<()> = async {
                let store = Store::connect(&ls.conn).await?;
                match &ls.location {
                    None => ls::buckets(&store, cli.global.json).await,
                    Some(loc) if ls.versions => ls::versions(&store, loc, cli.global.json).await,
                    Some(loc) => match ls.at {
                        Some(at) => ls::at(&store, loc, at, cli.global.json).await,
                        None => {
                            ls::objects(&store, loc, &ls.shown, ls.recursive, cli.global.json).await
                        }
                    },
                }
            }
            .await;
            match result {
                Ok(()) => Exit::Success,
                // `s3ma ls | head`: the reader has seen enough.
                Err(e) if is_broken_pipe(&e) => Exit::Success,
                Err(e) => fail(&rep, exit_for(&e), e),
            }
        }
        Config::Watch { targets, timing } => watch(targets, timing, &resolved.metrics, rep).await,
        Config::Sync(targets) => sync(targets, &resolved.metrics, rep).await,
        Config::Status(targets) => status(&targets, &rep, cli.global.json),
        Config::Verify { targets, download } => verify(targets, download, rep).await,
        Config::Restore(r) => {
            let stop = Arc::new(sync::Stop::default());
            signal_handler(stop.clone(), rep.clone(), true);
            match restore::restore(&r, &rep, &stop).await {
                Ok(exit) => exit,
                Err(e) => fail(&rep, exit_for(&e), e),
            }
        }
    }
}

/// The exit code of an error that ended a run: a mistake in the
/// configuration that only the server could see is still one (2).
fn exit_for(e: &anyhow::Error) -> Exit {
    match e
        .chain()
        .find_map(|c| c.downcast_ref::<store::StoreError>())
    {
        Some(se) if se.is_usage() => Exit::Usage,
        _ => Exit::Fatal,
    }
}

/// The reporter of a target: the primary's own, or one that names the
/// further destination before each line.
fn reporter_for(t: &Target, rep: &Arc<Reporter>) -> Arc<Reporter> {
    match &t.name {
        None => rep.clone(),
        Some(name) => Arc::new(rep.for_destination(name)),
    }
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
async fn sync(all: config::Targets, metrics: &config::Metrics, rep: Arc<Reporter>) -> Exit {
    let stop = Arc::new(sync::Stop::default());
    spawn_signal_handler(stop.clone(), rep.clone());
    let sources = metric_sources(&all, &rep);
    let mut all = all.into_iter().zip(sources.iter().map(|s| s.rep.clone()));
    let Some((primary, r)) = all.next() else {
        return Exit::Success;
    };
    let mut exits = vec![sync_one(primary, r, stop.clone()).await];
    let mut rest = tokio::task::JoinSet::new();
    for (t, r) in all {
        rest.spawn(sync_one(t, r, stop.clone()));
    }
    while let Some(done) = rest.join_next().await {
        exits.push(done.unwrap_or_else(|e| {
            fail(
                &rep,
                Exit::Fatal,
                anyhow::anyhow!("a sync task failed: {e}"),
            )
        }));
    }
    if let Some(path) = &metrics.file {
        if !write_metrics(path, &sources, &rep) {
            exits.push(Exit::Partial);
        }
    }
    worst(exits)
}

/// Each target's reporter, named by its destination for the metrics.
fn metric_sources(all: &config::Targets, rep: &Arc<Reporter>) -> Vec<metrics::Source> {
    all.iter()
        .map(|t| metrics::Source {
            dest: t.sync.dest.to_string(),
            rep: reporter_for(t, rep),
        })
        .collect()
}

async fn sync_one(t: Target, rep: Arc<Reporter>, stop: Arc<sync::Stop>) -> Exit {
    let dry_run = t.sync.dry_run;
    rep.start_clock();
    match sync::run(t.sync, &t.conn, rep.clone(), stop).await {
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
            fail(&rep, exit_for(&e), e)
        }
    }
}

/// `s3ma status`: each destination's record; exit 0 when all are healthy,
/// 1 when one needs attention, 3 when one cannot be read.
fn status(all: &config::Targets, rep: &Reporter, json: bool) -> Exit {
    let exits = all.iter().map(|t| match status::look(t) {
        Ok(found) => {
            status::print(t, &found, json);
            if found.problems.is_empty() {
                Exit::Success
            } else {
                Exit::Partial
            }
        }
        Err(e) => fail(rep, Exit::Fatal, e),
    });
    worst(exits.collect::<Vec<_>>())
}

/// `s3ma verify`: the primary, then every further destination; exit 0 when
/// each is an exact mirror, 1 when any differs, 3 when one cannot be
/// compared.
async fn verify(all: config::Targets, download: bool, rep: Arc<Reporter>) -> Exit {
    let stop = Arc::new(sync::Stop::default());
    spawn_signal_handler(stop.clone(), rep.clone());
    let mut exits = Vec::new();
    for t in all {
        let r = reporter_for(&t, &rep);
        let exit = match verify::run(&t.sync, &t.conn, &r, download, &stop).await {
            Ok(found) if found.clean() => Exit::Success,
            Ok(_) => Exit::Partial,
            Err(_) if stop.requested() => Exit::Interrupted,
            Err(e) => fail(&r, exit_for(&e), e),
        };
        exits.push(exit);
    }
    worst(exits)
}

/// `s3ma watch`: one daemon per destination, each with its own watches,
/// journal and retries, so a destination that is down never holds up the
/// others. Runs until stopped; a stop by signal is a normal exit. A
/// destination that cannot start (bad configuration) stops them all.
async fn watch(
    all: config::Targets,
    timing: config::WatchTiming,
    metrics: &config::Metrics,
    rep: Arc<Reporter>,
) -> Exit {
    let stop = Arc::new(sync::Stop::default());
    spawn_signal_handler(stop.clone(), rep.clone());
    let sources = metric_sources(&all, &rep);
    let reporters: Vec<Arc<Reporter>> = sources.iter().map(|s| s.rep.clone()).collect();
    if let Some(addr) = metrics.addr {
        match metrics::bind(addr).await {
            Ok(listener) => metrics::serve(listener, sources.clone()),
            Err(e) => return fail(&rep, Exit::Usage, e),
        }
    }
    if let Some(path) = metrics.file.clone() {
        spawn_metrics_file(path, sources.clone(), rep.clone(), stop.clone());
    }
    pulse::spawn_systemd_notifier(reporters.clone(), stop.clone());
    let mut daemons = tokio::task::JoinSet::new();
    let (primary_done, primary_ready) = tokio::sync::watch::channel(false);
    let mut primary_done = Some(primary_done);
    for (t, r) in all.into_iter().zip(reporters) {
        let stop = stop.clone();
        let is_primary = primary_done.is_some();
        let first = match primary_done.take() {
            Some(done) => watch::First::Primary(done),
            None if t.sync.copy_from.is_some() => watch::First::AfterPrimary(primary_ready.clone()),
            None => watch::First::Independent,
        };
        let cfg = config::WatchConfig {
            sync: t.sync,
            timing: timing.clone(),
        };
        daemons.spawn(async move {
            let exit = match watch::run(cfg, &t.conn, r.clone(), stop, first).await {
                Ok(sync::Status::Busy(lock)) => {
                    r.fatal(&format!("{BUSY} (lock {lock}); this one did nothing"));
                    Exit::Busy
                }
                Ok(_) => Exit::Success,
                Err(e) => fail(&r, exit_for(&e), e),
            };
            (is_primary, exit)
        });
    }
    let mut exits = Vec::new();
    while let Some(done) = daemons.join_next().await {
        let (is_primary, exit) = done.unwrap_or_else(|e| {
            (
                true,
                fail(
                    &rep,
                    Exit::Fatal,
                    anyhow::anyhow!("a watch task failed: {e}"),
                ),
            )
        });
        // Without the primary there is nothing to watch for; a further
        // destination that cannot go on leaves the others running.
        if is_primary && exit != Exit::Success && !stop.requested() {
            stop.request();
        }
        exits.push(exit);
    }
    if let Some(path) = &metrics.file {
        write_metrics(path, &sources, &rep);
    }
    worst(exits)
}

/// Writes the metrics file; a failure is an error, shown even with -q (a
/// stale textfile must not go unseen). Returns whether it was written.
fn write_metrics(path: &std::path::Path, sources: &[metrics::Source], rep: &Reporter) -> bool {
    match metrics::write_file(path, sources) {
        Ok(()) => true,
        Err(e) => {
            rep.failed(&path.display().to_string(), &format!("{e:#}"));
            false
        }
    }
}

/// Writes the metrics file now and every 15 s while `watch` runs (once
/// more when it has stopped: see [`watch`]); a failure is said once.
fn spawn_metrics_file(
    path: std::path::PathBuf,
    sources: Vec<metrics::Source>,
    rep: Arc<Reporter>,
    stop: Arc<sync::Stop>,
) {
    tokio::spawn(async move {
        let mut said = false;
        loop {
            if !said {
                said = !write_metrics(&path, &sources, &rep);
            } else {
                let _ = metrics::write_file(&path, &sources);
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => {}
                _ = stop.wait() => return,
            }
        }
    });
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
    signal_handler(stop, rep, false)
}

/// Like [`spawn_signal_handler`]; `restoring` says what is finished.
fn signal_handler(stop: Arc<sync::Stop>, rep: Arc<Reporter>, restoring: bool) {
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
                report::say("interrupted again: exiting now");
                std::process::exit(Exit::Interrupted as i32);
            }
            rep.warn(if restoring {
                "interrupted: finishing the downloads in flight (interrupt again to exit now)"
            } else {
                "interrupted: finishing the transfers in flight and saving state (interrupt again to exit now)"
            });
            stop.request();
        }
    });
}
