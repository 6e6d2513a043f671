//! `s3ma watch`: reconcile once, then keep the destination up to date from
//! file-system events, for as long as the daemon runs.
//!
//! The parts, each in its own file:
//! - [`intake`]: notify's events, through a bounded queue, become typed
//!   changes ([`intake::Change`]); a full queue or the kernel's overflow
//!   means a full reconcile.
//! - [`inbox`]: changes become pending paths ([`pending::Pending`]),
//!   journaled ([`journal::Journal`]) before anything else happens to
//!   them, so a crash at any moment loses nothing. Intake goes on while a
//!   reconcile runs.
//! - [`act`]: a due path is looked at and acted on: a file is uploaded (or
//!   copied on the server when it is a rename whose old object is known
//!   and nothing else touches it), a new directory is walked, a path that
//!   is gone is deleted (batched, within `--max-delete` per window:
//!   [`budget::Budget`]). Each task claims the keys it writes and reads
//!   ([`claims::Claims`]) so no two tasks race on one object.
//! - [`finish`]: a task's result settles its path, or brings it back later.
//! - [`reconcile`]: full reconciles (at the start, on SIGHUP, after an
//!   overflow, when the root is back or switched, periodically).
//! - [`root`]: the watched directory itself (gone, empty, a switched
//!   symbolic link); [`gate`]: backoff after failures.
//!
//! Only this daemon writes the destination while it runs (the lock says
//! so), so what it knows of the bucket (the state database, plus the keys
//! a task may have written without a record yet) is the whole truth, and
//! events alone keep it right; the periodic reconcile catches what the
//! kernel never reported.

mod act;
mod budget;
mod claims;
mod finish;
mod gate;
mod inbox;
mod intake;
mod journal;
mod pending;
mod reconcile;
mod root;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{Connection, SyncConfig, WatchConfig, WatchTiming};
use crate::report::{get, Reporter};
use crate::scan;
use crate::store::{Blame, StoreError};
use crate::sync::{self, Opened, Refused, Session, Status, Stop};

use self::budget::Budget;
use self::claims::{Claim, Claims};
use self::finish::Finished;
use self::gate::{Gate, Quiet};
use self::inbox::Inbox;
use self::intake::{Flags, Inbound, Watcher};
use self::journal::Journal;
use self::pending::{Pending, Timing};
use self::root::{Health, Root, Seen};

/// How often the root is looked at, besides the events about it.
const ROOT_POLL: Duration = Duration::from_secs(2);
/// Full reconciles this often while the inotify watch limit is hit.
const LIMITED_RESCAN: Duration = Duration::from_secs(300);

/// How often the whole tree is reconciled while part of it is not
/// watched: the rescan interval, or more often.
fn limited_rescan(timing: &WatchTiming) -> Duration {
    timing
        .rescan_interval
        .map_or(LIMITED_RESCAN, |i| i.min(LIMITED_RESCAN))
}
/// How long in-flight work may take to finish after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// The loop wakes at least this often, and says it is alive (systemd's
/// watchdog hears it).
pub(super) const BEAT: Duration = Duration::from_secs(1);
/// The record `s3ma status` reads is written this often.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// What the last full reconcile did, for `status` and systemd.
#[derive(Debug, Clone)]
pub struct LastReconcile {
    pub at: std::time::SystemTime,
    pub why: String,
    pub seconds: f64,
    pub uploaded: u64,
    pub deleted: u64,
    pub failed: u64,
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

/// The tasks in flight, with the paths each acts on and the keys it holds.
#[derive(Default)]
struct Tasks {
    set: JoinSet<Finished>,
    info: HashMap<tokio::task::Id, (Vec<String>, Claim)>,
    claims: Claims,
}

impl Tasks {
    fn spawn(
        &mut self,
        rels: Vec<String>,
        claim: Claim,
        task: impl std::future::Future<Output = Finished> + Send + 'static,
    ) {
        self.claims.take(&claim);
        let handle = self.set.spawn(task);
        self.info.insert(handle.id(), (rels, claim));
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    fn len(&self) -> usize {
        self.set.len()
    }
}

struct Daemon<'a> {
    cfg: &'a WatchConfig,
    sync: &'a SyncConfig,
    rep: &'a Reporter,
    stop: &'a Stop,
    session: Box<Session>,
    rx: mpsc::Receiver<Inbound>,
    tx: mpsc::Sender<Inbound>,
    flags: Arc<Flags>,
    inbox: Inbox,
    watcher: Option<Watcher>,
    root: Root,
    /// Some directories are not watched (the watch limit): reconcile often.
    limited: bool,
    gate: Gate,
    budget: Budget,
    tasks: Tasks,
    /// Keys that may hold an object the state database does not record
    /// (written by a task with no outcome recorded yet, or listed by a
    /// reconcile that could not delete them), with their sizes when known:
    /// a deletion at or under them must not miss them. Cleared by a full
    /// reconcile, which sees the bucket itself.
    maybe: BTreeMap<String, u64>,
    /// Paths that wait for another task to let go of a key.
    blocked: BTreeSet<String>,
    quiet: Quiet,
    rescan: Option<String>,
    /// The next reconcile hashes every file (the root is another
    /// directory now).
    recheck_all: bool,
    /// The last full reconcile that succeeded.
    last_reconcile: Option<LastReconcile>,
    /// When the status record was last written.
    status_saved: Option<Instant>,
    /// Directories watched, as counted when the watch began.
    watched_dirs: Option<u64>,
    /// When the next full reconcile is due, and why it is one.
    next_rescan: Option<(Instant, &'static str)>,
    /// The held deletions were last reported at this count.
    held_said: u64,
    /// A reconcile refused more deletions than the cap left: how many.
    held_by_reconcile: u64,
    /// When the root and the periodic reconcile were last looked at.
    last_tick: Instant,
    /// The failures of the journal and the state database were said.
    broken_said: (bool, bool),
    /// "Idle" was said since the last change.
    /// Said to be idle, and the lines printed then: a line printed since
    /// (a note on a late event, the root's state) is followed by another.
    idle_said: Option<u64>,
}

pub async fn run(
    mut cfg: WatchConfig,
    conn: &Connection,
    rep: Arc<Reporter>,
    stop: Arc<Stop>,
    mut first: First,
) -> Result<Status> {
    scan::check_root(&cfg.sync.dir)?;
    // Events name paths under the root as given (a symbolic link stays
    // one: it may be switched).
    cfg.sync.dir = sync::given_dir(&cfg.sync.dir);
    let cfg = cfg;
    let sync = &cfg.sync;
    let mut session = match sync::open(sync, conn, &rep).await? {
        Opened::Ready(s) => s,
        Opened::Busy(path) => return Ok(Status::Busy(path)),
    };
    let (journal, warning) = Journal::open(&session.state.path().with_extension("journal"))?;
    if let Some(w) = warning {
        rep.warn(&w);
    }
    let timing = Timing {
        debounce: cfg.timing.debounce,
        max_delay: cfg.timing.max_delay,
    };
    let mut inbox = Inbox::new(
        sync.dir.clone(),
        sync.dest.prefix.clone(),
        session.filter.clone(),
        Pending::new(timing),
        journal,
    );
    let (tx, rx) = mpsc::channel(cfg.timing.event_queue);
    let flags = Arc::new(Flags::default());
    let mut root = Root::new(&sync.dir, &session.filter);
    let before = root.about_to_watch();
    // Watch first, then reconcile: nothing changed during the reconcile is
    // missed.
    let intake::Started {
        watcher,
        partial,
        warning,
    } = intake::start(
        &sync.dir,
        sync.filter.follow_symlinks,
        tx.clone(),
        flags.clone(),
        limited_rescan(&cfg.timing),
    )?;
    if let Some(w) = warning {
        rep.warn(&w);
    }
    root.watching(before);
    spawn_hangup(flags.clone(), &rep);
    // What the journal holds was changed before a crash or a stop: hash it.
    let mut left = inbox.journal.all();
    left.extend(session.state.take_legacy_journal());
    inbox.resume(&left);
    let mut d = Daemon {
        cfg: &cfg,
        sync,
        rep: &rep,
        stop: &stop,
        session,
        rx,
        tx,
        flags,
        inbox,
        watcher: Some(watcher),
        root,
        limited: partial.is_some(),
        gate: Gate::default(),
        budget: Budget::new(sync.max_delete, cfg.timing.max_delete_window),
        tasks: Tasks::default(),
        maybe: BTreeMap::new(),
        blocked: BTreeSet::new(),
        quiet: Quiet::default(),
        rescan: None,
        recheck_all: false,
        next_rescan: None,
        last_reconcile: None,
        status_saved: None,
        watched_dirs: None,
        held_said: 0,
        held_by_reconcile: 0,
        last_tick: Instant::now(),
        broken_said: (false, false),
        idle_said: None,
    };
    // A link switched while the daemon was stopped: the first reconcile
    // hashes the new tree too.
    d.recheck_all = d
        .root
        .switched_since(d.session.state.meta(ROOT_META).as_deref());
    if let Some(msg) = &partial {
        rep.failed(&sync.dir.display().to_string(), msg);
    }
    if let First::AfterPrimary(primary) = &mut first {
        tokio::select! {
            // An error means the primary stopped trying: go on alone.
            _ = primary.wait_for(|done| *done) => {}
            _ = stop.wait() => {}
        }
    }
    let started = Instant::now();
    rep.pulse
        .set_status(format!("{}: initial reconcile under way", sync.dest));
    let result = d.reconcile("start").await;
    if let First::Primary(done) = &first {
        let _ = done.send(true);
    }
    let refused = result.as_ref().err().and_then(|e| {
        e.chain()
            .find_map(|c| c.downcast_ref::<Refused>())
            .map(|r| matches!(r, Refused::MaxDelete { .. }))
    });
    let outcome = match (&result, refused) {
        (Ok(()), _) => "done",
        (Err(_), Some(true)) => "done but for the deletions it holds",
        (Err(_), Some(false)) => "done but for the deletions it refused",
        (Err(_), None) => "failed, and is retried,",
    };
    match result {
        Ok(()) => d.schedule_rescan(),
        // Fix the configuration first: systemd shows the error. A further
        // destination's trouble is its own: it reports and retries, and
        // the others go on.
        Err(e)
            if matches!(first, First::Primary(_))
                && store_error(&e).is_some_and(|se| se.blame() == Blame::Fatal) =>
        {
            return Err(e)
        }
        Err(e) => d.reconcile_failed(&e),
    }
    let dirs = count_dirs(&sync.dir, sync.filter.follow_symlinks);
    d.watched_dirs = Some(dirs as u64);
    let c = &rep.counts;
    rep.status(
        "ready",
        &format!(
            "initial reconcile {} after {:.2} s (uploaded {}, copied {}, deleted {}, failed {}); \
             watching {} director{} under {} for changes to {}",
            outcome,
            started.elapsed().as_secs_f64(),
            get(&c.uploaded),
            get(&c.copied),
            get(&c.deleted),
            get(&c.failed),
            dirs,
            if dirs == 1 { "y" } else { "ies" },
            sync.dir.display(),
            sync.dest
        ),
        json!({"directories": dirs, "uploaded": get(&c.uploaded), "copied": get(&c.copied),
               "deleted": get(&c.deleted), "failed": get(&c.failed),
               "seconds": started.elapsed().as_secs_f64()}),
    );
    rep.pulse.set_ready();
    d.rep.pulse.set_status(d.status_line());
    d.save_status();
    d.run().await;
    d.shutdown().await;
    Ok(Status::Done)
}

fn count_dirs(dir: &Path, follow: bool) -> usize {
    walkdir::WalkDir::new(dir)
        .follow_links(follow)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_dir())
        .count()
}

/// The error chain's store error, if any.
fn store_error(e: &anyhow::Error) -> Option<&StoreError> {
    e.chain().find_map(|c| c.downcast_ref::<StoreError>())
}

/// The state database's name for the identity of the directory last
/// watched.
const ROOT_META: &str = "watched_root";

/// SIGHUP (`systemctl reload`): a full reconcile now.
fn spawn_hangup(flags: Arc<Flags>, rep: &Reporter) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            return rep.warn(&format!(
                "cannot take SIGHUP ({e}): `systemctl reload` will not start a reconcile"
            ))
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            flags.raise(&flags.hangup);
        }
    });
}

/// Why the loop woke.
enum Wake {
    Stop,
    Input(Option<Inbound>),
    Done(Box<Result<(tokio::task::Id, Finished), tokio::task::JoinError>>),
    Flag,
    Timer,
}

impl Daemon<'_> {
    async fn run(&mut self) {
        loop {
            if self.stop.requested() {
                return;
            }
            self.rep.pulse.beat();
            self.after_input();
            if let Some(why) = self.rescan.take() {
                match self.reconcile(&why).await {
                    Ok(()) => self.schedule_rescan(),
                    Err(e) => self.reconcile_failed(&e),
                }
                continue;
            }
            self.dispatch();
            self.inbox.journal.commit();
            self.say_broken();
            self.idle_check();
            self.say_held();
            // However busy the loop is with events, the root and the
            // periodic reconcile are looked at on time.
            if self.last_tick.elapsed() >= ROOT_POLL {
                self.tick();
            }
            let wake = self.next_wake();
            let busy = !self.tasks.is_empty();
            let stop = self.stop;
            let flags = self.flags.clone();
            let woke = tokio::select! {
                _ = stop.wait() => Wake::Stop,
                input = self.rx.recv() => Wake::Input(input),
                Some(done) = self.tasks.set.join_next_with_id(), if busy => {
                    Wake::Done(Box::new(done))
                }
                _ = flags.wake.notified() => Wake::Flag,
                _ = tokio::time::sleep_until(wake.into()) => Wake::Timer,
            };
            match woke {
                Wake::Stop | Wake::Input(None) => return,
                Wake::Input(Some(input)) => self.take_inputs(input),
                Wake::Done(done) => self.finish_joined(*done),
                Wake::Flag => {}
                Wake::Timer => self.tick(),
            }
        }
    }

    /// Takes `first` and whatever else is queued, journaled in one commit.
    fn take_inputs(&mut self, first: Inbound) {
        self.inbox.take(self.rep, first);
        while let Ok(more) = self.rx.try_recv() {
            self.inbox.take(self.rep, more);
        }
        self.inbox.journal_new();
    }

    /// Acts on what intake and the other threads raised: rescans, the
    /// root, new exclusions, the watch limit.
    fn after_input(&mut self) {
        if Flags::take(&self.flags.overflowed) {
            self.rescan.get_or_insert_with(|| {
                format!(
                    "more than {} events were waiting (--event-queue)",
                    self.cfg.timing.event_queue
                )
            });
        }
        if Flags::take(&self.flags.hangup) {
            self.rescan.get_or_insert_with(|| "SIGHUP".into());
        }
        if let Some(why) = self.inbox.rescan.take() {
            self.rescan.get_or_insert_with(|| why.to_string());
        }
        if std::mem::take(&mut self.inbox.limit_hit) && !self.limited {
            self.limited = true;
            self.rep.failed(
                &self.sync.dir.display().to_string(),
                &intake::watch_limit_message(&self.sync.dir, limited_rescan(&self.cfg.timing)),
            );
            self.schedule_rescan();
        }
        if std::mem::take(&mut self.inbox.ignore_changed) {
            // New exclusions: compile them, then reconcile with them.
            match self.sync.filter() {
                Ok(f) => {
                    self.inbox.filter = f.clone();
                    self.session.filter = f;
                    self.rescan
                        .get_or_insert_with(|| "the ignore file changed".into());
                }
                Err(e) => self.rep.failed(
                    &self.sync.dir.join(scan::IGNORE_FILE).display().to_string(),
                    &format!("{e:#}; keeping the previous exclusions"),
                ),
            }
        }
        if std::mem::take(&mut self.inbox.root_event) {
            self.check_root();
        }
    }

    /// Deletions held back: by the daemon's cap, or refused by a reconcile.
    fn held(&self) -> u64 {
        self.budget.held().max(self.held_by_reconcile)
    }

    /// Writes the record `s3ma status` reads.
    fn save_status(&mut self) {
        self.status_saved = Some(Instant::now());
        let mut record = crate::status::Record::now("watch", self.rep);
        record.rescan_seconds = self.cfg.timing.rescan_interval.map(|d| d.as_secs());
        record.last_reconcile = self
            .last_reconcile
            .as_ref()
            .map(|r| crate::status::Reconcile {
                at: crate::status::secs(r.at),
                seconds: r.seconds,
                why: r.why.clone(),
                uploaded: r.uploaded,
                deleted: r.deleted,
                failed: r.failed,
            });
        record.pending = self.inbox.pending.len() as u64;
        record.in_flight = self.tasks.len() as u64;
        record.held = self.held();
        record.watched_dirs = self.watched_dirs;
        record.save(&mut self.session.state, self.rep);
    }

    /// One line on how this daemon is doing (systemd's `STATUS=`).
    fn status_line(&self) -> String {
        let last = match &self.last_reconcile {
            Some(r) => format!(
                "last reconcile {} ({}, {:.1} s)",
                crate::report::utc(r.at),
                r.why,
                r.seconds
            ),
            None => "no reconcile yet".into(),
        };
        let error = match self.rep.pulse.last_error() {
            Some((at, m)) => format!("; last error {}: {m}", crate::report::utc(at)),
            None => String::new(),
        };
        format!(
            "{}: {} pending, {} in flight, {} held; {last}{error}",
            self.sync.dest,
            self.inbox.pending.len(),
            self.tasks.len(),
            self.held(),
        )
    }

    fn schedule_rescan(&mut self) {
        let every = if self.limited {
            Some(limited_rescan(&self.cfg.timing))
        } else {
            self.cfg.timing.rescan_interval
        };
        self.next_rescan = every.map(|i| (Instant::now() + i, "periodic"));
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + ROOT_POLL;
        if let Some((t, _)) = self.next_rescan {
            wake = wake.min(t);
        }
        if let Some(due) = self.inbox.pending.next_due() {
            // Every request slot taken: a finishing transfer wakes the loop;
            // parts of a multipart upload free slots without that, so look
            // again now and then.
            let due = if self.session.requests.available_permits() == 0 {
                due.max(now + Duration::from_millis(100))
            } else {
                due
            };
            // While gated, nothing starts before the gate opens.
            wake = wake.min(self.gate.until().map_or(due, |g| due.max(g)));
        }
        wake.min(now + BEAT).max(now + Duration::from_millis(1))
    }

    fn tick(&mut self) {
        self.last_tick = Instant::now();
        self.rep.pulse.set_status(self.status_line());
        if self
            .status_saved
            .is_none_or(|t| t.elapsed() >= STATUS_EVERY)
        {
            self.save_status();
        }
        if let Some((t, why)) = self.next_rescan {
            if t <= Instant::now() {
                self.rescan.get_or_insert_with(|| why.into());
            }
        }
        self.check_root();
    }

    /// Says when everything is mirrored, after anything else it says (at
    /// `-v`: tests and people watching it work know when it is idle).
    fn idle_check(&mut self) {
        if self.inbox.pending.len() == 0 && self.tasks.is_empty() {
            if self.idle_said != Some(self.rep.printed()) {
                self.rep.verbose_status(
                    "idle",
                    "every change is mirrored; waiting for the next",
                    json!({}),
                );
                self.idle_said = Some(self.rep.printed());
            }
        } else {
            self.idle_said = None;
        }
    }

    /// Looks at the root and acts on what changed: the watches go with a
    /// root that went; a root that is back, or leads elsewhere now, is
    /// watched afresh and reconciled; deletions wait while it is not
    /// present (said loudly).
    fn check_root(&mut self) -> Health {
        let dir = self.sync.dir.display().to_string();
        match self.root.look(&self.session.filter) {
            Seen::Same => {}
            Seen::Gone => {
                self.watcher = None;
                self.rep.failed(
                    &dir,
                    "the watched directory is gone (unmounted, moved or removed); deletions are \
                     suspended and s3ma waits for it to come back",
                );
            }
            Seen::Emptied => self.rep.failed(
                &dir,
                "the watched directory is empty now (is the disk mounted?); deletions are \
                 suspended until it holds files again",
            ),
            Seen::Refilled => self
                .rep
                .warn(&format!("{dir} holds files again; deletions resume")),
            Seen::Changed { why, other } => {
                self.recheck_all |= other;
                // The old watches are on another directory, or on nothing.
                self.watcher = None;
                let before = self.root.about_to_watch();
                match intake::start(
                    &self.sync.dir,
                    self.sync.filter.follow_symlinks,
                    self.tx.clone(),
                    self.flags.clone(),
                    limited_rescan(&self.cfg.timing),
                ) {
                    Ok(started) => {
                        self.watcher = Some(started.watcher);
                        self.root.watching(before);
                        if let Some(msg) = started.partial {
                            self.limited = true;
                            self.rep.failed(&dir, &msg);
                        }
                        if let Some(w) = started.warning {
                            self.rep.warn(&w);
                        }
                        self.rep
                            .warn(&format!("{why}; watching it and reconciling"));
                        self.rescan.get_or_insert(why);
                    }
                    Err(e) => {
                        self.root.unwatched();
                        if let Some(m) = self.quiet.pass(&format!("{e:#}")) {
                            self.rep.failed(&dir, &m);
                        }
                    }
                }
            }
        }
        self.root.health()
    }

    /// Says at once, and once, that the journal or the state database
    /// failed (the daemon goes on without it), and reconciles when the
    /// state database is gone: only the listing tells what is there now.
    fn say_broken(&mut self) {
        if let (Some(w), false) = (&self.inbox.journal.broken, self.broken_said.0) {
            self.rep.warn(w);
            self.broken_said.0 = true;
        }
        if let (Some(w), false) = (&self.session.state.broken, self.broken_said.1) {
            self.rep.warn(w);
            self.broken_said.1 = true;
            self.rescan
                .get_or_insert_with(|| "the state database failed".into());
        }
    }

    /// Stops intake, journals the events still on their way, lets
    /// in-flight work finish for a bounded time.
    async fn shutdown(&mut self) {
        self.watcher = None;
        while let Ok(input) = self.rx.try_recv() {
            self.inbox.take(self.rep, input);
        }
        self.inbox.journal_new();
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.set.join_next_with_id()).await {
                Ok(Some(done)) => self.finish_joined(done),
                Ok(None) => break,
                Err(_) => {
                    self.rep.warn(&format!(
                        "{} transfers did not finish within {} s of the stop; they will be \
                         redone at the next start",
                        self.tasks.len(),
                        STOP_GRACE.as_secs()
                    ));
                    self.tasks.set.abort_all();
                    break;
                }
            }
        }
        self.inbox.journal.commit();
        self.save_status();
        self.session.state.flush();
        self.say_broken();
        let waiting = self.inbox.pending.len();
        let some: Vec<&String> = self.inbox.pending.rels().map(|(r, _)| r).take(20).collect();
        self.rep.status(
            "stopped",
            &format!("stopped; {waiting} changes are journaled for the next start"),
            json!({"waiting": waiting, "held": self.budget.held(), "paths": some}),
        );
    }

    /// Done with a path: off the pending set, the journal and the held
    /// deletions.
    fn settle(&mut self, rel: &str) {
        self.inbox.pending.settle(rel);
        self.settled(rel);
    }
}
