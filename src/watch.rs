//! `s3ma watch`: reconcile once, then keep the destination up to date from
//! file-system events, for as long as the daemon runs.
//!
//! notify (inotify) feeds notify-debouncer-full, which pairs the two halves
//! of a rename and turns a removed tree into one event. Every changed path
//! is written to the state database's journal before anything else happens
//! to it, and leaves the journal only once its change is mirrored: a crash
//! at any moment loses nothing, because the next start re-checks (hashes)
//! the journal's paths during its first reconcile.
//!
//! A path is acted on once it has been quiet for the debounce window: a
//! file is uploaded through the same transfer code as `sync` (or copied on
//! the server when it is a renamed file whose old object is on record), a
//! new directory is walked (files may exist before its watch does), and a
//! path that is gone is deleted with `--delete`. Deletions stop while the
//! root is missing or empty (an unmounted disk must not empty the bucket).
//!
//! Failures are retried with capped exponential backoff: an error from the
//! server pauses all work (one gate, so a dead endpoint costs one probe per
//! backoff step), an error about one file delays that file only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use notify_debouncer_full::notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify_debouncer_full::notify::{self, EventKind, RecursiveMode};
use notify_debouncer_full::{
    new_debouncer_opt, DebounceEventResult, DebouncedEvent, Debouncer, NoCache,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{Connection, SyncConfig, WatchConfig};
use crate::keys;
use crate::plan::Decision;
use crate::report::{get, Reporter};
use crate::scan::{self, LocalFile, ScanItem};
use crate::store::StoreError;
use crate::sync::{self, Opened, Refused, Session, Status, Stop};
use crate::transfer::{Job, Outcome, UploadError, MAX_COPY};

/// Longest pause after server errors.
const MAX_GATE: Duration = Duration::from_secs(60);
/// Longest delay for a file that keeps failing.
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How often a missing or empty root is looked at again.
const ROOT_POLL: Duration = Duration::from_secs(2);
/// Full reconciles this often while the inotify watch limit is hit.
const LIMITED_RESCAN: Duration = Duration::from_secs(300);
/// How long in-flight work may take to finish after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long the debouncer holds events to pair the halves of a rename.
const PAIRING: Duration = Duration::from_millis(100);
/// How long a destination that copies from the primary waits for the
/// primary to hold a changed file of `size` bytes before it uploads the
/// file itself: 5 minutes, plus the time the primary needs to send it at
/// 1 MiB/s.
fn primary_wait(size: u64) -> Duration {
    Duration::from_secs(300 + size / (1 << 20))
}
/// How often it looks at the primary meanwhile, at most.
const PRIMARY_POLL: Duration = Duration::from_secs(5);
/// The same message is printed at most once per this long.
const REPEAT_QUIET: Duration = Duration::from_secs(60);

type Watcher = Debouncer<notify::RecommendedWatcher, NoCache>;

enum Input {
    Events(Vec<DebouncedEvent>),
    Errors(Vec<notify::Error>),
    Rescan(&'static str),
}

enum Wake {
    Stop,
    Input(Option<Input>),
    Done(Box<Result<(tokio::task::Id, Finished), tokio::task::JoinError>>),
    Timer,
}

/// A changed path waiting to be mirrored.
#[derive(Debug)]
struct Pending {
    /// Not to be looked at before this.
    due: Instant,
    /// The last event for it.
    marked: Instant,
    attempts: u32,
    /// The path it was renamed from, when the rename was seen whole.
    copy_from: Option<String>,
    /// When its current transfer started.
    started: Option<Instant>,
    /// A transfer to its key was started at least once (it may have
    /// written the object even if it did not finish).
    sent: bool,
    /// Since when, and how often, a destination that copies from the
    /// primary found the primary not holding this file yet.
    behind: Option<(Instant, u32)>,
}

enum Finished {
    File {
        rel: String,
        key: String,
        file: LocalFile,
        outcome: Outcome,
        copy_from: Option<String>,
    },
    Deleted {
        rel: String,
        /// key, size, and the error when it failed.
        results: Vec<(String, u64, Option<String>)>,
        elapsed: Duration,
        error: Option<StoreError>,
        /// Beside the path's own transfer (see `Daemon::sweep`).
        sweep: bool,
    },
}

/// Where the root stands; deletions only happen when it is `Present`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Present,
    Empty,
    Gone,
}

/// Prints a repeated message at most once per [`REPEAT_QUIET`].
#[derive(Default)]
struct Quiet(HashMap<String, (Instant, u32)>);

impl Quiet {
    /// The text to print now, if any (with how often it was held back).
    fn pass(&mut self, msg: &str) -> Option<String> {
        let now = Instant::now();
        match self.0.get_mut(msg) {
            Some((last, held)) if now.duration_since(*last) < REPEAT_QUIET => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let text = if *held > 0 {
                    format!("{msg} (repeated {held} more times)")
                } else {
                    msg.to_string()
                };
                *last = now;
                *held = 0;
                Some(text)
            }
            None => {
                if self.0.len() > 10_000 {
                    self.0.clear();
                }
                self.0.insert(msg.to_string(), (now, 0));
                Some(msg.to_string())
            }
        }
    }
}

/// The inotify limits, for the message that says how to raise them.
fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn watch_limit_message(dir: &Path) -> String {
    format!(
        "the inotify watch limit is reached (fs.inotify.max_user_watches = {}): changes in some \
         directories under {} are not seen as they happen. Raise it with \
         `sudo sysctl fs.inotify.max_user_watches=1048576`, and keep it with \
         `echo fs.inotify.max_user_watches=1048576 | sudo tee /etc/sysctl.d/90-s3ma.conf`, then \
         restart s3ma. Until then the whole tree is reconciled every {} minutes",
        sysctl("max_user_watches"),
        dir.display(),
        LIMITED_RESCAN.as_secs() / 60
    )
}

/// Starts watching `dir`. A tree that can only be watched in part (the
/// watch limit, an unreadable directory) is not an error: the message says
/// what is missing, and the caller falls back to periodic reconciles.
fn start_watcher(
    dir: &Path,
    cfg: &WatchConfig,
    tx: mpsc::UnboundedSender<Input>,
) -> Result<(Watcher, Option<String>)> {
    let handler = move |res: DebounceEventResult| {
        let _ = tx.send(match res {
            Ok(events) => Input::Events(events),
            Err(errors) => Input::Errors(errors),
        });
    };
    let config = notify::Config::default().with_follow_symlinks(cfg.sync.filter.follow_symlinks);
    // The debouncer only pairs renames and folds a removed tree into one
    // event; the quiet window is ours (`Pending::due`), so a path reaches
    // the journal within about PAIRING of its event.
    let pairing = cfg.debounce.clamp(Duration::from_millis(10), PAIRING);
    let mut watcher = new_debouncer_opt::<_, notify::RecommendedWatcher, NoCache>(
        pairing,
        Some(pairing / 2),
        handler,
        NoCache,
        config,
    )
    .map_err(|e| {
        anyhow!(
            "cannot start watching for changes: {e}; if it says too many open files, raise \
             fs.inotify.max_user_instances (now {}) with `sudo sysctl \
             fs.inotify.max_user_instances=1024`",
            sysctl("max_user_instances")
        )
    })?;
    let partial = match tokio::task::block_in_place(|| watcher.watch(dir, RecursiveMode::Recursive))
    {
        Ok(()) => None,
        Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
            Some(watch_limit_message(dir))
        }
        Err(e) => Some(format!(
            "cannot watch all of {}: {e}; changes there are found by a full reconcile every \
                 {} minutes instead",
            dir.display(),
            LIMITED_RESCAN.as_secs() / 60
        )),
    };
    Ok((watcher, partial))
}

fn count_dirs(dir: &Path, follow: bool) -> usize {
    walkdir::WalkDir::new(dir)
        .follow_links(follow)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_dir())
        .count()
}

fn root_id(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// The error chain's store error, if any.
fn store_error(e: &anyhow::Error) -> Option<&StoreError> {
    e.chain().find_map(|c| c.downcast_ref::<StoreError>())
}

/// Errors that say the server (not one file) is in trouble.
fn is_server_trouble(e: &UploadError) -> bool {
    matches!(e, UploadError::Store(s) if !matches!(s, StoreError::AccessDenied(_) | StoreError::NotFound))
}

fn backoff(attempts: u32, cap: Duration) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempts.min(16))).min(cap)
}

struct Daemon<'a> {
    cfg: &'a WatchConfig,
    sync: &'a SyncConfig,
    rep: &'a Reporter,
    stop: &'a Stop,
    session: Box<Session>,
    tx: mpsc::UnboundedSender<Input>,
    watcher: Option<Watcher>,
    root_id: Option<(u64, u64)>,
    root: Root,
    /// The root was said to have become empty.
    empty_announced: bool,
    limited: bool,
    pending: BTreeMap<String, Pending>,
    /// Every pending path not in flight, by when it is due.
    queue: BTreeSet<(Instant, String)>,
    in_flight: HashSet<String>,
    /// Paths that renamed files will be copied from: not deleted before.
    sources: BTreeMap<String, usize>,
    tasks: JoinSet<Finished>,
    /// The path each transfer task is for (to recover from a panicked task).
    task_rels: HashMap<tokio::task::Id, String>,
    /// No work is started before this (server errors).
    gate: Option<Instant>,
    gate_steps: u32,
    rescan: Option<&'static str>,
    next_rescan: Option<Instant>,
    quiet: Quiet,
    /// Pending paths not yet written to the journal.
    unjournaled: Vec<String>,
}

/// How a daemon's first reconcile is ordered with the primary's.
pub enum First {
    /// The primary: says when its first reconcile is over.
    Primary(tokio::sync::watch::Sender<bool>),
    /// A destination that copies from the primary: its first reconcile
    /// waits for the primary's, so it copies instead of uploading twice.
    AfterPrimary(tokio::sync::watch::Receiver<bool>),
    /// A destination elsewhere: no need to wait.
    Independent,
}

pub async fn run(
    mut cfg: WatchConfig,
    conn: &Connection,
    rep: Arc<Reporter>,
    stop: Arc<Stop>,
    mut first: First,
) -> Result<Status> {
    scan::check_root(&cfg.sync.dir)?;
    // Events name paths under the watched path as given: use one spelling.
    if let Ok(dir) = std::fs::canonicalize(&cfg.sync.dir) {
        cfg.sync.dir = dir;
    }
    let cfg = cfg;
    let sync = &cfg.sync;
    let session = match sync::open(sync, conn, &rep).await? {
        Opened::Ready(s) => s,
        Opened::Busy(path) => return Ok(Status::Busy(path)),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Watch first, then reconcile: nothing changed during the reconcile is
    // missed.
    let (watcher, partial) = start_watcher(&sync.dir, &cfg, tx.clone())?;
    spawn_hangup(tx.clone());
    let mut d = Daemon {
        cfg: &cfg,
        sync,
        rep: &rep,
        stop: &stop,
        session,
        tx,
        watcher: Some(watcher),
        root_id: root_id(&sync.dir),
        root: Root::Present,
        empty_announced: false,
        limited: partial.is_some(),
        pending: BTreeMap::new(),
        queue: BTreeSet::new(),
        in_flight: HashSet::new(),
        sources: BTreeMap::new(),
        tasks: JoinSet::new(),
        task_rels: HashMap::new(),
        gate: None,
        gate_steps: 0,
        rescan: None,
        next_rescan: None,
        quiet: Quiet::default(),
        unjournaled: Vec::new(),
    };
    if let Some(msg) = &partial {
        rep.failed(&sync.dir.display().to_string(), msg);
    }
    // An empty directory at the start is no news; it becoming empty is.
    d.root = d.root_state();
    if let First::AfterPrimary(primary) = &mut first {
        tokio::select! {
            // An error means the primary stopped trying: go on alone.
            _ = primary.wait_for(|done| *done) => {}
            _ = stop.wait() => {}
        }
    }
    // What the journal holds was changed before a crash or a stop: hash it.
    let now = Instant::now();
    for rel in d.session.state.dirty() {
        d.add_pending(&rel, now, now, None);
    }
    // Already in the journal.
    d.unjournaled.clear();
    let started = Instant::now();
    let result = d.reconcile("start").await;
    if let First::Primary(done) = &first {
        let _ = done.send(true);
    }
    let first_ok = result.is_ok();
    match result {
        Ok(()) => d.schedule_rescan(),
        // Fix the configuration first: systemd shows the error. A further
        // destination's trouble is its own: it reports and retries, and
        // the others go on.
        Err(e)
            if matches!(first, First::Primary(_))
                && store_error(&e).is_some_and(|se| {
                    se.is_fatal() && !matches!(se, StoreError::Unreachable { .. })
                }) =>
        {
            return Err(e)
        }
        Err(e) => d.reconcile_failed(&e),
    }
    let dirs = count_dirs(&sync.dir, sync.filter.follow_symlinks);
    let c = &rep.counts;
    rep.status(
        "ready",
        &format!(
            "initial reconcile {} in {:.2} s (uploaded {}, deleted {}, failed {}); watching {} \
             director{} under {} for changes to {}",
            if first_ok { "done" } else { "failed (retried)" },
            started.elapsed().as_secs_f64(),
            get(&c.uploaded),
            get(&c.deleted),
            get(&c.failed),
            dirs,
            if dirs == 1 { "y" } else { "ies" },
            sync.dir.display(),
            sync.dest
        ),
        json!({"directories": dirs, "uploaded": get(&c.uploaded), "deleted": get(&c.deleted),
               "failed": get(&c.failed), "seconds": started.elapsed().as_secs_f64()}),
    );
    d.run(&mut rx).await;
    d.shutdown(&mut rx).await;
    Ok(Status::Done)
}

/// SIGHUP (`systemctl reload`): a full reconcile now.
fn spawn_hangup(tx: mpsc::UnboundedSender<Input>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if tx.send(Input::Rescan("SIGHUP")).is_err() {
                return;
            }
        }
    });
}

impl Daemon<'_> {
    async fn run(&mut self, rx: &mut mpsc::UnboundedReceiver<Input>) {
        loop {
            if self.stop.requested() {
                return;
            }
            if let Some(why) = self.rescan.take() {
                match self.reconcile(why).await {
                    Ok(()) => self.schedule_rescan(),
                    Err(e) => self.reconcile_failed(&e),
                }
                continue;
            }
            self.dispatch();
            let wake = self.next_wake();
            let stop = self.stop;
            let busy = !self.tasks.is_empty();
            let woke = tokio::select! {
                _ = stop.wait() => Wake::Stop,
                input = rx.recv() => Wake::Input(input),
                Some(done) = self.tasks.join_next_with_id(), if busy => Wake::Done(Box::new(done)),
                _ = tokio::time::sleep_until(wake.into()) => Wake::Timer,
            };
            match woke {
                Wake::Stop | Wake::Input(None) => return,
                Wake::Input(Some(input)) => {
                    self.take(input);
                    // Batch whatever else is queued into one journal commit.
                    while let Ok(more) = rx.try_recv() {
                        self.take(more);
                    }
                    self.journal();
                }
                Wake::Done(done) => self.finish_joined(*done),
                Wake::Timer => self.tick(),
            }
        }
    }

    /// Stops intake, after journaling the events still on their way (the
    /// debouncer holds each for up to [`PAIRING`]); lets in-flight work
    /// finish for a bounded time.
    async fn shutdown(&mut self, rx: &mut mpsc::UnboundedReceiver<Input>) {
        tokio::time::sleep(PAIRING * 2).await;
        self.watcher = None;
        while let Ok(input) = rx.try_recv() {
            self.take(input);
        }
        self.journal();
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(done)) => self.finish_joined(done),
                Ok(None) => break,
                Err(_) => {
                    self.rep.warn(&format!(
                        "{} transfers did not finish within {} s of the stop; they will be \
                         redone at the next start",
                        self.tasks.len(),
                        STOP_GRACE.as_secs()
                    ));
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        self.session.state.flush();
        if let Some(w) = &self.session.state.broken {
            self.rep.warn(w);
        }
        let waiting = self.pending.len();
        self.rep.status(
            "stopped",
            &format!("stopped; {waiting} changes are journaled for the next start"),
            json!({"waiting": waiting}),
        );
    }

    fn schedule_rescan(&mut self) {
        let every = match (self.cfg.rescan_interval, self.limited) {
            (Some(i), true) => Some(i.min(LIMITED_RESCAN)),
            (None, true) => Some(LIMITED_RESCAN),
            (i, false) => i,
        };
        self.next_rescan = every.map(|i| Instant::now() + i);
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        if let Some(t) = self.next_rescan {
            wake = wake.min(t);
        }
        wake = wake.min(now + ROOT_POLL);
        if let Some((due, _)) = self.queue.first() {
            // Every request slot taken: a finishing transfer wakes the loop;
            // parts of a multipart upload free slots without that, so look
            // again now and then.
            let due = if self.session.requests.available_permits() == 0 {
                (*due).max(now + Duration::from_millis(100))
            } else {
                *due
            };
            // While gated, nothing starts before the gate opens.
            wake = wake.min(self.gate.map_or(due, |g| due.max(g)));
        }
        wake.max(now + Duration::from_millis(5))
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if self.next_rescan.is_some_and(|t| t <= now) {
            self.rescan.get_or_insert("periodic");
        }
        self.check_root();
    }

    /// Looks at the root; leaving or entering the "not present" state is
    /// said loudly.
    /// Where the root stands now, without acting on it.
    fn root_state(&self) -> Root {
        let filter = &self.session.filter;
        // Present: it holds something sync would mirror or report (hidden
        // and excluded names do not count, as for sync's empty-tree guard).
        match std::fs::read_dir(&self.sync.dir) {
            Ok(entries) => {
                let mirrored = entries.filter_map(|e| e.ok()).any(|e| {
                    let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                    e.file_name()
                        .to_str()
                        .is_none_or(|name| !filter.excludes_path(name, is_dir))
                });
                if mirrored {
                    Root::Present
                } else {
                    Root::Empty
                }
            }
            Err(_) => Root::Gone,
        }
    }

    /// Looks at the root and acts on a change: deletions stop while it is
    /// gone or has become empty (said loudly), and a root that is back, or
    /// is another directory now (remounted, made again), is watched afresh
    /// and reconciled.
    fn check_root(&mut self) -> Root {
        let dir = self.sync.dir.clone();
        let now = self.root_state();
        let was = std::mem::replace(&mut self.root, now);
        if now == Root::Gone || (now == Root::Present && root_id(&dir) != self.root_id) {
            // The kernel dropped the watches with the old directory.
            self.watcher = None;
        }
        match now {
            Root::Gone if was != Root::Gone => self.rep.failed(
                &dir.display().to_string(),
                "the watched directory is gone (unmounted, moved or removed); deletions are \
                 suspended and s3ma waits for it to come back",
            ),
            Root::Empty if was == Root::Present => self.rep.failed(
                &dir.display().to_string(),
                "the watched directory is empty now (is the disk mounted?); deletions are \
                 suspended until it holds files again",
            ),
            Root::Present
                if was == Root::Empty && self.watcher.is_some() && self.empty_announced =>
            {
                self.rep.warn(&format!(
                    "{} holds files again; deletions resume",
                    dir.display()
                ));
            }
            Root::Present if was == Root::Empty && self.watcher.is_some() => {}
            Root::Present if self.watcher.is_none() => {
                match start_watcher(&dir, self.cfg, self.tx.clone()) {
                    Ok((w, partial)) => {
                        self.watcher = Some(w);
                        self.root_id = root_id(&dir);
                        if let Some(msg) = partial {
                            self.limited = true;
                            self.rep.failed(&dir.display().to_string(), &msg);
                        }
                    }
                    Err(e) => {
                        if let Some(m) = self.quiet.pass(&format!("{e:#}")) {
                            self.rep.failed(&dir.display().to_string(), &m);
                        }
                        self.root = Root::Gone;
                        return Root::Gone;
                    }
                }
                self.rep.warn(&format!(
                    "{} is back (or is another directory now); watching it again and \
                     reconciling",
                    dir.display()
                ));
                self.rescan.get_or_insert("the directory is back");
            }
            _ => {}
        }
        self.empty_announced = match now {
            Root::Empty => self.empty_announced || was == Root::Present,
            _ => false,
        };
        now
    }

    /// Full reconcile: in-flight work is finished first (it shares the
    /// state database). Journal entries older than the reconcile are
    /// settled by it when it succeeds.
    async fn reconcile(&mut self, why: &str) -> Result<()> {
        self.rep.debug(&format!("reconcile ({why})"));
        while let Some(done) = self.tasks.join_next_with_id().await {
            self.finish_joined(done);
        }
        if self.check_root() == Root::Gone {
            return Ok(());
        }
        let started = Instant::now();
        let recheck: HashSet<String> = self.pending.keys().cloned().collect();
        let before = (
            get(&self.rep.counts.uploaded),
            get(&self.rep.counts.deleted),
        );
        let status =
            sync::reconcile(&mut self.session, self.sync, self.rep, self.stop, &recheck).await?;
        let uploaded = get(&self.rep.counts.uploaded) - before.0;
        let deleted = get(&self.rep.counts.deleted) - before.1;
        match status {
            Status::Done => {
                let settled: Vec<String> = self
                    .pending
                    .iter()
                    .filter(|(rel, p)| p.marked < started && !self.sources.contains_key(*rel))
                    .map(|(rel, _)| rel.clone())
                    .collect();
                for rel in settled {
                    self.settle(&rel);
                }
                self.session.state.flush();
                self.gate_steps = 0;
                self.gate = None;
            }
            Status::Partial => {
                let now = Instant::now();
                for rel in std::mem::take(&mut self.session.failed_rels) {
                    self.add_pending(&rel, now + backoff(1, MAX_RETRY), now, None);
                }
                self.journal();
            }
            Status::Interrupted | Status::Busy(_) => {}
        }
        if why != "start" {
            self.rep.status(
                "reconcile",
                &format!(
                    "reconcile ({why}) done in {:.2} s: uploaded {uploaded}, deleted {deleted}",
                    started.elapsed().as_secs_f64()
                ),
                json!({"reason": why, "uploaded": uploaded, "deleted": deleted,
                       "seconds": started.elapsed().as_secs_f64()}),
            );
        }
        Ok(())
    }

    fn reconcile_failed(&mut self, e: &anyhow::Error) {
        if e.chain().any(|c| c.downcast_ref::<Refused>().is_some()) {
            let msg = format!("{e:#}");
            if let Some(m) = self.quiet.pass(&msg) {
                self.rep.failed(&self.sync.dir.display().to_string(), &m);
            }
            // A guard refused the deletions; look again later.
            self.next_rescan = Some(Instant::now() + LIMITED_RESCAN);
            return;
        }
        let wait = self.close_gate();
        let msg = format!("reconcile failed: {e:#}");
        if let Some(m) = self.quiet.pass(&msg) {
            self.rep.failed(
                &self.sync.dest.to_string(),
                &format!("{m}; retrying in {} s", wait.as_secs()),
            );
        }
        self.rescan.take();
        self.next_rescan = Some(Instant::now() + wait);
    }

    /// Server trouble: pause everything, for longer each time in a row.
    fn close_gate(&mut self) -> Duration {
        let wait = backoff(self.gate_steps, MAX_GATE);
        self.gate_steps = self.gate_steps.saturating_add(1);
        self.gate = Some(Instant::now() + wait);
        wait
    }

    fn add_pending(&mut self, rel: &str, due: Instant, marked: Instant, copy_from: Option<String>) {
        match self.pending.get_mut(rel) {
            Some(p) => {
                let later = p.due.max(due);
                p.marked = p.marked.max(marked);
                // Changed again: the primary sends the new version, wait
                // for it afresh.
                p.behind = None;
                if copy_from.is_some() {
                    let old = std::mem::replace(&mut p.copy_from, copy_from);
                    self.unpin(old.as_deref());
                }
                self.set_due(rel, later);
            }
            None => {
                self.unjournaled.push(rel.to_string());
                self.pending.insert(
                    rel.to_string(),
                    Pending {
                        due,
                        marked,
                        attempts: 0,
                        copy_from,
                        started: None,
                        sent: false,
                        behind: None,
                    },
                );
                if !self.in_flight.contains(rel) {
                    self.queue.insert((due, rel.to_string()));
                }
            }
        }
    }

    /// Sets when a pending path is next looked at, keeping the queue in
    /// step (a path in flight is queued again when it finishes).
    fn set_due(&mut self, rel: &str, due: Instant) {
        let Some(p) = self.pending.get_mut(rel) else {
            return;
        };
        let old = std::mem::replace(&mut p.due, due);
        if !self.in_flight.contains(rel) {
            let mut entry = (old, rel.to_string());
            self.queue.remove(&entry);
            entry.0 = due;
            self.queue.insert(entry);
        }
    }

    /// A path's transfer ended: back in the queue if it is still pending.
    fn landed(&mut self, rel: &str) {
        self.in_flight.remove(rel);
        if let Some(p) = self.pending.get(rel) {
            self.queue.insert((p.due, rel.to_string()));
        }
    }

    fn pin(&mut self, rel: &str) {
        *self.sources.entry(rel.to_string()).or_default() += 1;
    }

    fn unpin(&mut self, rel: Option<&str>) {
        let Some(rel) = rel else { return };
        if let Some(n) = self.sources.get_mut(rel) {
            *n -= 1;
            if *n == 0 {
                self.sources.remove(rel);
            }
        }
    }

    /// Is a copy from `rel` (or from under it) still to come?
    fn pinned(&self, rel: &str) -> bool {
        let under = format!("{rel}/");
        self.sources.contains_key(rel)
            || self
                .sources
                .range(under.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&under))
    }

    /// A path relative to the root as a key-safe string; problems are
    /// reported (once in a while) and the path is skipped.
    fn rel_of(&mut self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.sync.dir).ok()?;
        if rel.as_os_str().is_empty() {
            return None;
        }
        match keys::rel_key(rel, &self.sync.dest.prefix) {
            // Left out whether it is a file or a directory (hidden, say):
            // not even journaled.
            Ok(r)
                if self.session.filter.excludes_path(&r, false)
                    && self.session.filter.excludes_path(&r, true) =>
            {
                None
            }
            Ok(r) => Some(r),
            Err(e) => {
                let msg = e.to_string();
                if self
                    .quiet
                    .pass(&format!("{}{msg}", path.display()))
                    .is_some()
                {
                    self.rep.failed(&path.to_string_lossy(), &msg);
                }
                None
            }
        }
    }

    fn take(&mut self, input: Input) {
        match input {
            Input::Rescan(why) => {
                self.rescan.get_or_insert(why);
            }
            Input::Errors(errors) => {
                for e in errors {
                    if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                        if !self.limited {
                            self.limited = true;
                            self.rep.failed(
                                &self.sync.dir.display().to_string(),
                                &watch_limit_message(&self.sync.dir),
                            );
                            self.schedule_rescan();
                        }
                    } else if let Some(m) = self.quiet.pass(&format!("watching: {e}")) {
                        self.rep.warn(&m);
                    }
                }
            }
            Input::Events(events) => {
                for ev in events {
                    self.event(ev);
                }
            }
        }
    }

    fn event(&mut self, ev: DebouncedEvent) {
        self.rep
            .debug(&format!("event {:?} {:?}", ev.kind, ev.paths));
        if ev.need_rescan() {
            self.rescan
                .get_or_insert("the kernel's event queue overflowed");
            return;
        }
        match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) | EventKind::Other => return,
            _ => {}
        }
        let marked = ev.time;
        let due = marked + self.cfg.debounce;
        let ignore_file = self.sync.dir.join(scan::IGNORE_FILE);
        if ev.paths.iter().any(|p| p == &ignore_file) {
            // New exclusions: compile them, then reconcile with them.
            match scan::Filter::new(&self.sync.dir, &self.sync.filter) {
                Ok(f) => {
                    self.session.filter = f;
                    self.rescan.get_or_insert("the ignore file changed");
                }
                Err(e) => self.rep.failed(
                    &ignore_file.display().to_string(),
                    &format!("{e:#}; keeping the previous exclusions"),
                ),
            }
        }
        if ev.paths.iter().any(|p| p == &self.sync.dir) {
            if matches!(
                ev.kind,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
            ) {
                // The watched directory itself was removed or moved: even if
                // a new one is already there, its watches are gone.
                self.watcher = None;
            }
            self.check_root();
            return;
        }
        if let (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), [from, to]) =
            (&ev.kind, &ev.paths[..])
        {
            let from = self.rel_of(from);
            let to = self.rel_of(to);
            if let Some(to) = &to {
                if let Some(f) = &from {
                    self.pin(f);
                }
                self.add_pending(to, due, marked, from.clone());
            }
            if let Some(from) = from {
                self.add_pending(&from, due, marked, None);
            }
            return;
        }
        for p in &ev.paths {
            if let Some(rel) = self.rel_of(p) {
                self.add_pending(&rel, due, marked, None);
            }
        }
    }

    /// Writes the paths that are not yet journaled (new since the last
    /// call) to the journal, in one commit.
    fn journal(&mut self) {
        let rels = std::mem::take(&mut self.unjournaled);
        if !rels.is_empty() {
            self.session
                .state
                .mark_dirty(rels.iter().map(String::as_str));
        }
    }

    /// Starts what is due, as far as request permits allow.
    fn dispatch(&mut self) {
        let now = Instant::now();
        if self.gate.is_some_and(|g| g > now) {
            return;
        }
        while self.queue.first().is_some_and(|(due, _)| *due <= now) {
            let Ok(permit) = self.session.requests.clone().try_acquire_owned() else {
                return;
            };
            let Some((due, rel)) = self.queue.pop_first() else {
                return;
            };
            if self.in_flight.contains(&rel) || self.pending.get(&rel).is_none_or(|p| p.due != due)
            {
                continue;
            }
            // Off the queue while it is looked at; whatever keeps it
            // pending without a transfer puts it back.
            self.in_flight.insert(rel.clone());
            if !self.start(rel.clone(), permit, now) {
                self.landed(&rel);
            }
        }
    }

    /// Decides what a due path needs and starts it; false when no
    /// transfer was started (settled, or due again later).
    fn start(
        &mut self,
        rel: String,
        permit: tokio::sync::OwnedSemaphorePermit,
        now: Instant,
    ) -> bool {
        if !self.pending.contains_key(&rel) {
            return false;
        }
        let path = self.sync.dir.join(&rel);
        let follow = self.sync.filter.follow_symlinks;
        let meta = if follow {
            std::fs::metadata(&path)
        } else {
            std::fs::symlink_metadata(&path)
        };
        let meta = match meta {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.gone(rel, permit, now);
            }
            Err(e) => {
                self.retry_later(
                    &rel,
                    &path.display().to_string(),
                    &format!("cannot read: {e}"),
                );
                return false;
            }
        };
        if self.session.filter.excludes_path(&rel, meta.is_dir()) {
            self.settle(&rel);
            return false;
        }
        if meta.is_dir() {
            self.walk_dir(&rel, &path, now);
            return false;
        }
        if !meta.is_file() {
            let what = if meta.file_type().is_symlink() {
                "symlink skipped (pass --follow-symlinks to upload what it points to)"
            } else {
                "skipped: not a regular file"
            };
            self.rep.note(&path.display().to_string(), what);
            self.settle(&rel);
            return false;
        }
        // Still being written: wait until it has been quiet a whole window.
        let mtime = UNIX_EPOCH + Duration::from_nanos(scan::mtime_ns(&meta).max(0) as u64);
        if let Ok(age) = SystemTime::now().duration_since(mtime) {
            if age < self.cfg.debounce {
                self.set_due(&rel, now + (self.cfg.debounce - age));
                return false;
            }
        }
        let file = LocalFile {
            rel: rel.clone(),
            path,
            size: meta.len(),
            mtime_ns: scan::mtime_ns(&meta),
        };
        let key = self.sync.dest.key_for(&rel);
        let record = self.session.state.get(&key);
        if self.sync.delete {
            // A directory replaced by this file leaves objects under it.
            let stale = self.stale_under(&key);
            self.sweep(&rel, stale);
        }
        let Some(p) = self.pending.get_mut(&rel) else {
            return false;
        };
        let copy_from = p.copy_from.take();
        p.started = Some(now);
        p.sent = true;
        // Wait a while for the primary's upload to land, to copy it then;
        // after that, upload from the file.
        let waited_enough = |since: Instant| now.duration_since(since) >= primary_wait(file.size);
        let wait_for_primary = self.sync.copy_from.is_some()
            && !p.behind.is_some_and(|(since, _)| waited_enough(since));
        // A renamed file whose old object is on record with this very size
        // and mtime: copy it on the server instead of sending it again.
        let source = copy_from.as_ref().and_then(|from| {
            let from_key = self.sync.dest.key_for(from);
            let src = self.session.state.get(&from_key)?;
            (from_key != key
                && src.size == file.size
                && src.mtime_ns == file.mtime_ns
                && file.size <= MAX_COPY)
                .then_some((from_key, src))
        });
        if source.is_none() {
            self.unpin(copy_from.as_deref());
        }
        let decision = match &record {
            None => Decision::Upload("new"),
            Some(r) if r.size != file.size => Decision::Upload("changed"),
            Some(r) if r.mtime_ns != file.mtime_ns => Decision::Verify { head: false },
            Some(_) => Decision::Hash,
        };
        let job = Job {
            file: file.clone(),
            key: key.clone(),
            decision,
            remote: None,
            state: record,
            wait_for_primary,
        };
        let up = self.session.uploader.clone();
        let rel_for_task = rel.clone();
        let pinned_from = source.as_ref().and(copy_from);
        let task = self.tasks.spawn(async move {
            let outcome = match source {
                Some((from_key, src)) => up.copy_or_upload(job, from_key, src).await,
                None => up.run(job, false).await,
            };
            drop(permit);
            Finished::File {
                rel,
                key,
                file,
                outcome,
                copy_from: pinned_from,
            }
        });
        self.task_rels.insert(task.id(), rel_for_task);
        true
    }

    /// A directory appeared (created, or moved in): its files may predate
    /// its watch, so walk it.
    fn walk_dir(&mut self, rel: &str, path: &Path, now: Instant) {
        let copy_from = self.pending.get_mut(rel).and_then(|p| p.copy_from.take());
        let mut found = Vec::new();
        let mut problems = Vec::new();
        scan::walk_under(
            &self.sync.dir,
            path,
            &self.sync.dest.prefix,
            &self.session.filter,
            self.sync.filter.follow_symlinks,
            |item| {
                match item {
                    ScanItem::File(f) => found.push(f),
                    ScanItem::Kept {
                        rel,
                        message,
                        problem,
                        ..
                    } => problems.push((
                        self.sync.dir.join(&rel).display().to_string(),
                        message,
                        problem,
                    )),
                    ScanItem::Problem { path, message } | ScanItem::Blind { path, message } => {
                        problems.push((path.display().to_string(), message, true))
                    }
                }
                true
            },
        );
        for (what, message, problem) in problems {
            if problem {
                self.rep.failed(&what, &message);
            } else {
                self.rep.note(&what, &message);
            }
        }
        for f in found {
            let from = copy_from
                .as_ref()
                .map(|c| format!("{c}{}", &f.rel[rel.len()..]));
            // Already mirrored as it is (an event on a directory that did
            // not change its files, say): nothing to do.
            let key = self.sync.dest.key_for(&f.rel);
            let on_record = self
                .session
                .state
                .get(&key)
                .is_some_and(|r| r.size == f.size && r.mtime_ns == f.mtime_ns);
            if on_record && from.is_none() {
                continue;
            }
            if let Some(from) = &from {
                self.pin(from);
            }
            self.add_pending(&f.rel, now, now, from);
        }
        if self.sync.delete {
            // A directory replacing a file, or a directory replaced by a new
            // one: the file's object and the old files' objects go.
            let key = self.sync.dest.key_for(rel);
            let mut stale = self.stale_under(&key);
            if let Some(r) = self.session.state.get(&key) {
                stale.push((key, r.size));
            }
            self.sweep(rel, stale);
        }
        self.unpin(copy_from.as_deref());
        // The directory itself is settled once its files are journaled.
        self.journal();
        self.settle(rel);
    }

    /// A path that no longer exists: with `--delete`, its object (and, for
    /// a directory, the objects under it) go too.
    fn gone(
        &mut self,
        rel: String,
        permit: tokio::sync::OwnedSemaphorePermit,
        now: Instant,
    ) -> bool {
        if !self.sync.delete || self.session.filter.excludes_key(&rel) {
            self.settle(&rel);
            return false;
        }
        // A renamed file's old object stays until its copy is made.
        if self.pinned(&rel) {
            self.set_due(&rel, now + Duration::from_millis(100));
            return false;
        }
        if self.check_root() != Root::Present {
            self.set_due(&rel, now + ROOT_POLL);
            return false;
        }
        let key = self.sync.dest.key_for(&rel);
        let mut keys: Vec<(String, u64)> = Vec::new();
        match self.session.state.get(&key) {
            Some(r) => keys.push((key.clone(), r.size)),
            // Sent, then gone before it was recorded: delete it anyway
            // (deleting a missing key is harmless).
            None if self.pending.get(&rel).is_some_and(|p| p.sent) => keys.push((key.clone(), 0)),
            None => {}
        }
        keys.extend(self.stale_under(&key));
        if keys.is_empty() || !self.may_delete(&rel, keys.len()) {
            self.settle(&rel);
            return false;
        }
        if let Some(p) = self.pending.get_mut(&rel) {
            p.started = Some(now);
        }
        self.spawn_delete(rel, keys, false, Some(permit));
        true
    }

    /// Keys on record under the key `dir` whose files are gone (and not
    /// excluded): what a removed or replaced directory leaves behind.
    fn stale_under(&mut self, dir: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for k in self.session.state.keys_under(dir) {
            let Some(sub) = self.sync.dest.rel_of(&k) else {
                continue;
            };
            if std::fs::symlink_metadata(self.sync.dir.join(sub)).is_ok()
                || self.session.filter.excludes_key(sub)
            {
                continue;
            }
            let size = self.session.state.get(&k).map_or(0, |r| r.size);
            out.push((k, size));
        }
        out
    }

    /// The `--max-delete` guard for one path's deletions.
    fn may_delete(&self, rel: &str, count: usize) -> bool {
        match self.sync.max_delete {
            Some(max) if count as u64 > max => {
                self.rep.failed(
                    &self.sync.dir.join(rel).display().to_string(),
                    &format!(
                        "refusing to delete {count} objects under {}: more than --max-delete \
                         {max}; nothing was deleted (the next reconcile checks again)",
                        self.sync.dest.key_for(rel)
                    ),
                );
                false
            }
            _ => true,
        }
    }

    /// A path that now exists as a file where a directory was, or the
    /// reverse: the old objects go (with `--delete`), beside the path's own
    /// transfer. A failure brings the path back later to try again.
    fn sweep(&mut self, rel: &str, keys: Vec<(String, u64)>) {
        if keys.is_empty()
            || !self.sync.delete
            || self.root != Root::Present
            || !self.may_delete(rel, keys.len())
        {
            return;
        }
        self.spawn_delete(rel.to_string(), keys, true, None);
    }

    fn spawn_delete(
        &mut self,
        rel: String,
        keys: Vec<(String, u64)>,
        sweep: bool,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let store = self.session.store.clone();
        let bucket = self.sync.dest.bucket.clone();
        let tracked = (!sweep).then(|| rel.clone());
        let task = self.tasks.spawn(async move {
            let start = Instant::now();
            let mut results = Vec::new();
            let mut error = None;
            for batch in keys.chunks(1000) {
                let names: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
                match store.delete_batch(&bucket, &names).await {
                    Ok(failed) => {
                        let failed: HashMap<String, String> = failed.into_iter().collect();
                        for (k, size) in batch {
                            results.push((k.clone(), *size, failed.get(k).cloned()));
                        }
                    }
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            drop(permit);
            Finished::Deleted {
                rel,
                results,
                elapsed: start.elapsed(),
                error,
                sweep,
            }
        });
        if let Some(rel) = tracked {
            self.task_rels.insert(task.id(), rel);
        }
    }

    /// Done with a path: off the pending set and the journal.
    fn settle(&mut self, rel: &str) {
        if let Some(p) = self.pending.remove(rel) {
            self.queue.remove(&(p.due, rel.to_string()));
            self.unpin(p.copy_from.as_deref());
        }
        self.session.state.clear_dirty(rel);
    }

    /// A problem with one path: try it again later, saying so now and then.
    fn retry_later(&mut self, rel: &str, what: &str, message: &str) {
        let Some(p) = self.pending.get_mut(rel) else {
            return;
        };
        p.attempts = p.attempts.saturating_add(1);
        let wait = backoff(p.attempts, MAX_RETRY);
        self.set_due(rel, Instant::now() + wait);
        if let Some(m) = self.quiet.pass(&format!("{what}: {message}")) {
            self.rep.failed(
                what,
                &format!("{}; retrying", m.trim_start_matches(&format!("{what}: "))),
            );
        }
    }

    fn finish_joined(&mut self, done: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
        match done {
            Ok((id, f)) => {
                self.task_rels.remove(&id);
                self.finish(f);
            }
            Err(e) => {
                // A task that panicked or was cancelled: its path is looked
                // at again (or, when stopping, at the next start).
                if let Some(rel) = self.task_rels.remove(&e.id()) {
                    if !e.is_cancelled() {
                        self.rep
                            .failed(&rel, &format!("transfer task failed: {e}; retrying"));
                    }
                    self.set_due(&rel, Instant::now() + backoff(1, MAX_RETRY));
                    self.landed(&rel);
                }
            }
        }
    }

    fn finish(&mut self, done: Finished) {
        match done {
            Finished::File {
                rel,
                key,
                file,
                outcome,
                copy_from,
            } => {
                let failed = matches!(outcome, Outcome::Failed(_));
                match (failed, self.pending.get_mut(&rel)) {
                    // The source stays (and stays pinned) for the next try.
                    (true, Some(p)) if p.copy_from.is_none() => p.copy_from = copy_from,
                    _ => self.unpin(copy_from.as_deref()),
                }
                self.finish_file(&rel, key, file, outcome);
                self.landed(&rel);
            }
            Finished::Deleted {
                rel,
                results,
                elapsed,
                error,
                sweep,
            } => {
                let mut failed = false;
                for (k, size, err) in results {
                    match err {
                        None => {
                            self.rep.deleted(&k, Some((size, elapsed)), false);
                            self.session.state.remove(&k);
                        }
                        Some(msg) => {
                            failed = true;
                            if let Some(m) = self.quiet.pass(&format!("cannot delete {k}: {msg}")) {
                                self.rep.failed(&k, &m);
                            }
                        }
                    }
                }
                self.session.state.flush();
                if sweep {
                    if error.is_some() || failed {
                        // Look at the path again later; the sweep is redone.
                        let now = Instant::now();
                        self.add_pending(&rel, now + backoff(1, MAX_RETRY), now, None);
                        self.journal();
                    }
                    return;
                }
                if let Some(e) = error {
                    self.server_trouble(&rel, &e.to_string());
                } else if failed {
                    self.retry_later(&rel, &rel.clone(), "some objects could not be deleted");
                } else {
                    self.gate_steps = 0;
                    self.done_with(&rel);
                }
                self.landed(&rel);
            }
        }
    }

    /// A path's change is mirrored: settle it, unless it changed again
    /// meanwhile (then it is due again after its own window).
    fn done_with(&mut self, rel: &str) {
        let Some(p) = self.pending.get_mut(rel) else {
            return self.session.state.clear_dirty(rel);
        };
        let changed_since = p.started.is_some_and(|s| p.marked >= s);
        p.started = None;
        p.attempts = 0;
        if !changed_since {
            self.settle(rel);
        }
    }

    fn finish_file(&mut self, rel: &str, key: String, file: LocalFile, outcome: Outcome) {
        let outcome = match sync::record_success(
            self.rep,
            &mut self.session.state,
            &key,
            rel,
            outcome,
            false,
        ) {
            Ok(()) => {
                self.gate_steps = 0;
                self.done_with(rel);
                self.session.state.flush();
                return;
            }
            Err(other) => other,
        };
        match outcome {
            Outcome::Uploaded { .. } | Outcome::Copied { .. } | Outcome::Unchanged { .. } => {}
            Outcome::WouldUpload { .. } => self.done_with(rel),
            Outcome::Behind => {
                if let Some(p) = self.pending.get_mut(rel) {
                    let (since, polls) = p.behind.unwrap_or((Instant::now(), 0));
                    p.behind = Some((since, polls + 1));
                    let poll = Duration::from_millis(250 << polls.min(5)).min(PRIMARY_POLL);
                    self.set_due(rel, Instant::now() + poll);
                }
            }
            // Look again: it is now a deletion (or it came back).
            Outcome::Vanished => self.set_due(rel, Instant::now()),
            Outcome::Failed(e) if is_server_trouble(&e) => {
                self.server_trouble(rel, &format!("{e}"));
            }
            Outcome::Failed(e) => {
                let hint = match e {
                    UploadError::Changed => "; it is written to constantly",
                    _ => "",
                };
                self.retry_later(
                    rel,
                    &file.path.display().to_string(),
                    &format!("{e}{hint} (key {key})"),
                );
            }
        }
        self.session.state.flush();
    }

    /// The server failed a request: everything waits, the path included.
    fn server_trouble(&mut self, rel: &str, message: &str) {
        let wait = if self.gate.is_some_and(|g| g > Instant::now()) {
            // Already closed by another failure of the same moment.
            self.gate.map_or(Duration::ZERO, |g| g - Instant::now())
        } else {
            self.close_gate()
        };
        if let Some(p) = self.pending.get(rel) {
            let due = p.due.max(Instant::now() + wait);
            self.set_due(rel, due);
        }
        let waiting = self.pending.len();
        if let Some(m) = self.quiet.pass(message) {
            self.rep.failed(
                &self.sync.dest.to_string(),
                &format!(
                    "{m}; {waiting} changes are waiting (journaled), retrying in {} s",
                    wait.as_secs().max(1)
                ),
            );
        }
    }
}
