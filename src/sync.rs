//! `s3ma sync`: one full reconcile of a directory with a bucket prefix.
//!
//! Pipeline: a blocking walker thread and a listing task each feed a
//! bounded channel in key order; the coordinator (this module) merges the
//! two streams, asks the state database, and hands work to upload tasks
//! through the request semaphore, so a slow server slows the walk rather
//! than growing memory. The coordinator alone owns the state database and
//! the reporter's counters' meaning. Deletions are collected and run last,
//! after the guards (empty tree, `--max-delete`) have been checked.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::batch::Batches;

use crate::config::{Backup, Connection, SyncConfig};
use crate::keys::Location;
use crate::plan::{self, Decision};
use crate::report::Reporter;
use crate::scan::{self, Filter, LocalFile, ScanItem};
use crate::state::{self, LockResult, RunLock, State};
use crate::store::{Blame, ObjectInfo, Store, StoreError};
use crate::transfer::{Job, OpenUploads, Outcome, UploadError, Uploader};

/// How a sync ended, when it did not fail outright.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// Everything mirrored.
    Done,
    /// Some files failed; the rest was mirrored.
    Partial,
    /// Stopped by a signal after finishing in-flight work.
    Interrupted,
    /// Another sync of the same pair holds the lock.
    Busy(String),
}

/// Set by the signal handler; checked between work items.
#[derive(Debug, Default)]
pub struct Stop {
    flag: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Stop {
    /// Returns true when a stop had already been requested.
    pub fn request(&self) -> bool {
        let again = self.flag.swap(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        again
    }
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    /// Resolves once a stop has been requested.
    pub async fn wait(&self) {
        loop {
            let woken = self.wake.notified();
            if self.requested() {
                return;
            }
            woken.await;
        }
    }
}

/// A guard refused the deletions: the run stops and the caller exits with
/// the fatal code.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The tree has nothing to mirror while the prefix holds objects.
    #[error("{0}")]
    EmptyTree(String),
    /// More deletions than `--max-delete` allows.
    #[error("{message}")]
    MaxDelete { count: usize, message: String },
}

/// Keys that must survive `--delete`: paths that exist locally but are not
/// mirrored (symlinks, unreadable directories, special files).
#[derive(Default)]
struct Kept {
    exact: BTreeSet<String>,
    dirs: Vec<String>,
}

impl Kept {
    fn add(&mut self, rel: String, dir: bool) {
        if dir {
            self.dirs.push(format!("{rel}/"));
        }
        self.exact.insert(rel);
    }
    fn covers(&self, rel: &str) -> bool {
        self.exact.contains(rel) || self.dirs.iter().any(|d| rel.starts_with(d.as_str()))
    }
}

type Done = (String, LocalFile, Outcome);

/// Keys asked for per listing request. AWS returns at most 1,000 whatever
/// is asked; servers that return more need fewer requests for a long
/// listing. Memory stays bounded by one page.
const LIST_PAGE: i32 = 10_000;

struct Run<'a> {
    cfg: &'a SyncConfig,
    rep: &'a Reporter,
    state: &'a mut State,
    failed_rels: &'a mut Vec<String>,
    unconfirmed: &'a mut Vec<String>,
    fatal: Option<StoreError>,
    upload_failures: u64,
    server_errors_in_a_row: usize,
}

impl Run<'_> {
    fn finish(&mut self, (key, file, outcome): Done) {
        let dry = self.cfg.dry_run;
        let metadata = self.cfg.transfer.metadata;
        let concluded = conclude(self.rep, self.state, &key, &file, outcome, dry, metadata);
        if matches!(concluded, Concluded::Vanished | Concluded::Failed { .. }) && !dry {
            self.unconfirmed.push(key.clone());
        }
        if matches!(
            &concluded,
            Concluded::Failed {
                blame: Blame::Server,
                ..
            }
        ) {
            self.server_errors_in_a_row += 1;
        } else {
            self.server_errors_in_a_row = 0;
        }
        match concluded {
            Concluded::Mirrored => {}
            Concluded::Vanished => self.rep.note(
                &file.path.display().to_string(),
                "disappeared during the sync; not uploaded",
            ),
            // Not asked for (`wait_for_primary` is off in a sync).
            Concluded::Behind => {
                self.upload_failures += 1;
                self.failed_rels.push(file.rel.clone());
                self.rep.failed(
                    &file.path.display().to_string(),
                    &format!("the primary does not hold it yet (key {key})"),
                )
            }
            Concluded::Failed {
                error: UploadError::Store(e),
                ..
            } if e.is_fatal() => {
                if self.fatal.is_none() {
                    self.fatal = Some(e);
                }
            }
            Concluded::Failed {
                blame: Blame::Server,
                message,
                ..
            } if self.server_errors_in_a_row >= self.cfg.transfer.concurrency => {
                // Every request in flight failed on the server's side, none
                // got through: the endpoint is in no state to serve this
                // run, not one file unlucky.
                self.fatal = Some(StoreError::Unreachable {
                    endpoint: self.cfg.dest.to_string(),
                    detail: format!(
                        "{} requests in a row failed, the last with: {message} (raise \
                         --read-timeout if the link is slow)",
                        self.server_errors_in_a_row
                    ),
                });
            }
            Concluded::Failed { message, .. } => {
                self.upload_failures += 1;
                self.failed_rels.push(file.rel.clone());
                self.rep.failed(&file.path.display().to_string(), &message)
            }
        }
    }
}

/// What a finished transfer means for its file, in `sync` and `watch`
/// alike (see [`conclude`]).
#[derive(Debug)]
pub enum Concluded {
    /// The object holds the file (or, in a dry run, would be made to):
    /// reported, and recorded in the state database.
    Mirrored,
    /// The file disappeared; nothing was sent.
    Vanished,
    /// A destination that copies from the primary found the primary not
    /// holding the file yet.
    Behind,
    /// Failed: whose problem it is, and a message naming the key.
    Failed {
        blame: Blame,
        error: UploadError,
        message: String,
    },
}

/// Reports and records one transfer's outcome, and says what it means.
pub fn conclude(
    rep: &Reporter,
    state: &mut State,
    key: &str,
    file: &LocalFile,
    outcome: Outcome,
    dry_run: bool,
    metadata: bool,
) -> Concluded {
    // With --metadata: what the object was written with now.
    let written = |state: &mut State| {
        if let Some(a) = metadata.then(|| crate::attrs::of(&file.path)).flatten() {
            state.set_attrs(key, &a.key());
        }
    };
    match outcome {
        Outcome::Uploaded {
            record,
            elapsed,
            reason,
        } => {
            rep.uploaded(
                key,
                &file.path.to_string_lossy(),
                record.size,
                elapsed,
                false,
                reason,
            );
            state.put(key, &record);
            written(state);
        }
        Outcome::Copied {
            record,
            elapsed,
            from,
        } => {
            rep.copied(key, &from, record.size, elapsed);
            state.put(key, &record);
            written(state);
        }
        Outcome::Unchanged { record, why } => {
            rep.skipped(key, why);
            if !dry_run {
                state.put(key, &record);
            }
        }
        Outcome::WouldUpload { reason, from: None } => rep.uploaded(
            key,
            &file.path.to_string_lossy(),
            file.size,
            Duration::ZERO,
            true,
            reason,
        ),
        Outcome::WouldUpload {
            reason,
            from: Some(from),
        } => rep.would_copy(key, &from, file.size, reason),
        Outcome::Vanished => return Concluded::Vanished,
        Outcome::Behind => return Concluded::Behind,
        Outcome::Failed(error) => {
            let hint = match error {
                UploadError::Changed => "; it is written to constantly, try again later",
                _ => "",
            };
            rep.pulse.count_failure(error.blame());
            return Concluded::Failed {
                blame: error.blame(),
                message: format!("{error}{hint} (key {key})"),
                error,
            };
        }
    }
    Concluded::Mirrored
}

/// Before a transfer that may replace the object at `key`: the state
/// database stops vouching for the old object, durably, so that a run
/// killed during the transfer cannot trust a record the object no longer
/// matches (the next run asks the server instead).
pub fn before_write(state: &mut State, key: &str, record: Option<&crate::state::Record>) {
    if record.is_some() {
        state.mark_unsure(key);
    }
}

/// The directory as the user named it, made absolute without resolving
/// symbolic links: `/srv/app/current` stays itself when it is switched to
/// another release, so its state and lock do not follow one target.
pub fn given_dir(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

fn identity(dir: &Path, conn: &Connection, cfg: &SyncConfig) -> String {
    format!(
        "{}\n{}\n{}\n{}",
        dir.display(),
        conn.endpoint.as_deref().unwrap_or("aws"),
        cfg.dest.bucket,
        cfg.dest.prefix
    )
}

/// Where the state database of a (directory, destination) pair is.
pub fn state_path(cfg: &SyncConfig, conn: &Connection) -> PathBuf {
    let id = state::state_id(&identity(&given_dir(&cfg.dir), conn, cfg));
    cfg.state_dir.join(format!("{id}.db"))
}

/// The lock is the destination's: two runs that write one bucket prefix
/// would undo each other's work, whatever directories they mirror (the
/// same tree through a symbolic link, or two trees by mistake).
fn lock_identity(conn: &Connection, cfg: &SyncConfig) -> String {
    format!(
        "lock\n{}\n{}\n{}",
        conn.endpoint.as_deref().unwrap_or("aws"),
        cfg.dest.bucket,
        cfg.dest.prefix
    )
}

/// What a run of one (directory, destination) pair holds while it goes:
/// the lock, the state database, the client and the shared request limit.
pub struct Session {
    pub store: Store,
    pub state: State,
    pub filter: Filter,
    pub uploader: Uploader,
    pub requests: Arc<Semaphore>,
    /// Paths (relative to the root) whose upload failed in the last
    /// reconcile.
    pub failed_rels: Vec<String>,
    /// Keys the last reconcile tried to write without recording an outcome
    /// (failed, or the file vanished): an object may be there or not.
    pub unconfirmed: Vec<String>,
    /// Objects the last reconcile would have deleted but did not, because
    /// some uploads failed, or the server refused (`watch` deletes them one
    /// by one, with its own guards).
    pub deletes_left: Vec<String>,
    /// Follows the server with the number of requests in flight, unless
    /// `--concurrency` fixed it.
    _pace: Option<crate::pace::Governor>,
    _lock: RunLock,
}

pub enum Opened {
    Ready(Box<Session>),
    /// Another run holds the lock (its path).
    Busy(String),
}

/// Takes the lock, opens the state database and builds the client.
pub async fn open(cfg: &SyncConfig, conn: &Connection, rep: &Reporter) -> Result<Opened> {
    scan::check_root(&cfg.dir)?;
    let dir = given_dir(&cfg.dir);
    let id_text = identity(&dir, conn, cfg);
    let id = state::state_id(&id_text);
    let lock = match state::lock(&cfg.state_dir, &state::state_id(&lock_identity(conn, cfg)))? {
        LockResult::Acquired(l) => l,
        LockResult::Busy(path) => return Ok(Opened::Busy(path.display().to_string())),
    };
    // The state directory exists now; inside the tree, it is never mirrored.
    let filter = cfg.filter()?;
    // Databases made before the path as given was the identity were named
    // after the resolved path: adopt one.
    if let Ok(resolved) = std::fs::canonicalize(&cfg.dir) {
        if resolved != dir {
            let legacy = state::state_id(&identity(&resolved, conn, cfg));
            state::adopt(&cfg.state_dir, &legacy, &id);
        }
    }
    let state = if cfg.dry_run && !cfg.state_dir.join(format!("{id}.db")).exists() {
        State::disabled()
    } else {
        let (s, warning) = State::open(&cfg.state_dir, &id, &id_text)?;
        if let Some(w) = warning {
            rep.warn(&w);
        }
        s
    };
    let store = Store::connect(conn)
        .await?
        .with_sse(cfg.transfer.sse.clone());
    rep.debug(&format!(
        "{} -> {} via {}; state {}",
        cfg.dir.display(),
        cfg.dest,
        store.endpoint(),
        state.path().display()
    ));
    let requests = Arc::new(Semaphore::new(cfg.transfer.concurrency));
    let pace = cfg.transfer.concurrency_cap.map(|cap| {
        let debug = rep.debugging();
        let dest = cfg.dest.to_string();
        crate::pace::Governor::start(
            requests.clone(),
            store.signals(),
            crate::pace::Pace::new(cfg.transfer.concurrency, cap),
            move |c| {
                if debug {
                    crate::report::say(&format!(
                        "{}debug: {dest}: requests in flight {} -> {}: {}",
                        crate::report::stamp(),
                        c.from,
                        c.to,
                        c.why
                    ));
                }
            },
        )
    });
    let mut uploader = Uploader::new(
        store.clone(),
        &cfg.dest,
        cfg.transfer.clone(),
        requests.clone(),
    );
    let open_uploads = OpenUploads::new(cfg.state_dir.join(format!("{id}.uploads")));
    if !cfg.dry_run {
        abort_left_uploads(&store, cfg, rep, &open_uploads).await;
        uploader = uploader.recording_uploads(open_uploads);
    }
    if let Some((primary, primary_conn)) = &cfg.copy_from {
        // The primary's objects are looked at through its own client (its
        // region); the copies are made through this destination's.
        let primary_store = Store::connect(primary_conn)
            .await?
            .with_sse(cfg.transfer.sse.clone());
        uploader = uploader.copying_from(primary.clone(), primary_store);
    }
    Ok(Opened::Ready(Box::new(Session {
        store,
        state,
        filter,
        uploader,
        requests,
        failed_rels: Vec::new(),
        unconfirmed: Vec::new(),
        deletes_left: Vec::new(),
        _pace: pace,
        _lock: lock,
    })))
}

/// Aborts the multipart uploads a killed run left under way, so their parts
/// stop taking space. One that cannot be aborted now is tried again next
/// time.
async fn abort_left_uploads(store: &Store, cfg: &SyncConfig, rep: &Reporter, open: &OpenUploads) {
    for (key, upload_id) in open.left() {
        match store
            .abort_multipart(&cfg.dest.bucket, &key, &upload_id)
            .await
        {
            Ok(()) => {
                open.forget(&upload_id);
                // Not a file of this run: said, not counted.
                rep.status(
                    "abort",
                    &format!(
                        "aborted the unfinished multipart upload of {} that an interrupted run \
                         left",
                        crate::report::printable(&key)
                    ),
                    serde_json::json!({"key": key}),
                );
            }
            // Completed or aborted after all.
            Err(StoreError::NotFound) => {
                open.forget(&upload_id);
                rep.debug(&format!(
                    "the multipart upload of {key} an interrupted run left is gone already"
                ));
            }
            Err(e) => rep.warn(&format!(
                "cannot abort the unfinished multipart upload of {key} an interrupted run \
                 left ({e}); trying again next time"
            )),
        }
    }
}

/// `s3ma sync`: one reconcile.
pub async fn run(
    cfg: SyncConfig,
    conn: &Connection,
    rep: Arc<Reporter>,
    stop: Arc<Stop>,
) -> Result<Status> {
    let mut session = match open(&cfg, conn, &rep).await? {
        Opened::Ready(s) => s,
        Opened::Busy(path) => return Ok(Status::Busy(path)),
    };
    let started = std::time::Instant::now();
    let status = reconcile(&mut session, &cfg, &rep, &stop, &Recheck::None).await?;
    if !cfg.dry_run && matches!(status, Status::Done | Status::Partial) {
        let c = &rep.counts;
        let mut record = crate::status::Record::now("sync", &rep);
        record.last_reconcile = Some(crate::status::Reconcile {
            at: crate::status::secs(std::time::SystemTime::now()),
            seconds: started.elapsed().as_secs_f64(),
            why: "sync".into(),
            uploaded: crate::report::get(&c.uploaded) + crate::report::get(&c.copied),
            deleted: crate::report::get(&c.deleted),
            failed: crate::report::get(&c.failed),
        });
        record.save(&mut session.state, &rep);
        session.state.flush();
    }
    Ok(status)
}

/// Files whose content must be hashed even when size and mtime look
/// unchanged.
pub enum Recheck {
    None,
    /// These paths (relative to the root): changes no size or mtime shows.
    These(HashSet<String>),
    /// Every file: the root is another directory now, whose files may
    /// match the records' sizes and mtimes by chance.
    All,
}

impl Recheck {
    fn wants(&self, rel: &str) -> bool {
        match self {
            Recheck::None => false,
            Recheck::These(rels) => rels.contains(rel),
            Recheck::All => true,
        }
    }
}

/// Makes the destination match the directory: walk, list, merge, upload,
/// then the guarded deletions. `recheck` holds paths (relative to the root)
/// whose content must be hashed even when size and mtime look unchanged.
pub async fn reconcile(
    session: &mut Session,
    cfg: &SyncConfig,
    rep: &Reporter,
    stop: &Stop,
    recheck: &Recheck,
) -> Result<Status> {
    let failures_before = rep.failures();
    let Session {
        store,
        state,
        filter,
        uploader,
        requests,
        failed_rels,
        unconfirmed,
        deletes_left,
        ..
    } = session;
    failed_rels.clear();
    unconfirmed.clear();
    deletes_left.clear();
    let (store, filter, uploader, requests) = (&*store, &*filter, &*uploader, &*requests);

    let (walker, mut lrx) = spawn_walk(cfg, filter);
    let trusted = trusted_since(state, cfg, recheck);
    // The header rules objects may have been written with: those of the
    // last complete run, and of any run since that did not complete. Each
    // object one of them gives other headers than this run's gets these.
    let rules = cfg.transfer.headers.to_json();
    let mut old_rules = vec![crate::headers::Rules::from_json(
        state.meta(HEADER_RULES).as_deref(),
    )];
    let mut pending: Vec<String> = state
        .meta(HEADER_RULES_PENDING)
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    old_rules.extend(
        pending
            .iter()
            .map(|r| crate::headers::Rules::from_json(Some(r))),
    );
    let restyling = old_rules.iter().any(|r| r.to_json() != rules);
    if restyling && !cfg.dry_run && !pending.contains(&rules) {
        pending.push(rules.clone());
        state.set_meta(
            HEADER_RULES_PENDING,
            &serde_json::to_string(&pending).unwrap_or_default(),
        );
    }
    let (lister, mut rrx) = match trusted {
        Some(at) => {
            rep.verbose_status(
                "listing",
                &format!(
                    "--trust-state: what {} holds is taken from the state database (its last \
                     full listing was at {}); a full listing comes after --full-check-every",
                    cfg.dest,
                    crate::report::utc(at)
                ),
                serde_json::json!({"source": "state", "full_listing": crate::report::utc(at)}),
            );
            spawn_state_listing(state.path().to_path_buf(), cfg.dest.prefix.clone())
        }
        None => spawn_listing(store, cfg, listing_boundaries(state, cfg)),
    };

    let mut run = Run {
        cfg,
        rep,
        state,
        failed_rels,
        unconfirmed,
        fatal: None,
        upload_failures: 0,
        server_errors_in_a_row: 0,
    };
    let mut merge = Merge::default();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut interrupted = false;

    // The merge; on any error it stops spawning, and the in-flight uploads
    // are drained below either way (so multipart uploads get aborted or
    // completed, never cut off).
    let merged: Result<()> = async {
        loop {
            if stop.requested() {
                interrupted = true;
                break;
            }
            if run.fatal.is_some() {
                break;
            }
            while let Some(done) = tasks.try_join_next() {
                run.finish(done.context("an upload task failed")?);
            }
            let (key, file, matched) = match merge
                .next_pair(&mut lrx, &mut rrx, cfg, rep, filter)
                .await?
            {
                None => break,
                Some(Pair::Extra(r)) => {
                    if cfg.delete {
                        merge.deletes.push((r.key, r.size));
                    }
                    continue;
                }
                Some(Pair::File { key, file, object }) => (key, file, object),
            };
            rep.scanned();
            let record = run.state.get(&key);
            let mut decision = plan::decide(&file, matched.as_ref(), record.as_ref());
            if decision == Decision::Skip && recheck.wants(&file.rel) {
                decision = Decision::Hash;
            }
            if cfg.checksum && !matches!(decision, Decision::Upload(_)) {
                decision = Decision::Checksum;
            }
            // New header rules for an object that stays: a copy onto
            // itself, at once when nothing else is to be done, else once
            // the content is found the same (an upload writes them anyway).
            let restyle = (restyling && {
                let wants = cfg.transfer.headers.for_rel(&file.rel);
                old_rules.iter().any(|r| r.for_rel(&file.rel) != wants)
            })
                // --metadata: a chmod or chown is mirrored the same way.
                || (cfg.transfer.metadata && crate::attrs::changed(run.state, &key, &file.path));
            if restyle && decision == Decision::Skip && record.is_some() {
                decision = Decision::Restyle;
            }
            if decision == Decision::Skip {
                rep.skipped(&key, "unchanged");
                continue;
            }
            if !cfg.dry_run {
                before_write(run.state, &key, record.as_ref());
            }
            let permit = requests
                .clone()
                .acquire_owned()
                .await
                .context("the request limiter closed")?;
            let job = Job {
                file: file.clone(),
                key: key.clone(),
                decision,
                remote: matched,
                state: record,
                wait_for_primary: false,
                restyle,
            };
            let up = uploader.clone();
            let dry_run = cfg.dry_run;
            tasks.spawn(async move {
                let outcome = up.run(job, dry_run).await;
                drop(permit);
                (key, file, outcome)
            });
        }
        Ok(())
    }
    .await;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(done) => run.finish(done),
            Err(e) => {
                run.upload_failures += 1;
                rep.failed("upload task", &format!("failed: {e}"));
            }
        }
    }
    drop(lrx);
    drop(rrx);
    lister.abort();
    // The walk must have ended normally for its silence to mean absence.
    let walked = walker.await;
    let Run {
        state,
        fatal,
        upload_failures,
        ..
    } = run;
    state.flush();
    merged?;
    if let Some(e) = fatal {
        return Err(anyhow!(e)).with_context(|| format!("cannot upload to {}", cfg.dest));
    }
    if interrupted {
        return Ok(Status::Interrupted);
    }
    if walked.is_err() {
        bail!("the directory walk stopped unexpectedly; nothing was deleted");
    }

    let deletes = merge.deletes;
    if !deletes.is_empty() {
        let refused =
            !merge.saw_local || cfg.max_delete.is_some_and(|max| deletes.len() as u64 > max);
        if refused && cfg.dry_run {
            // The candidates are what the user runs --dry-run to review
            // before raising the guard: every one, then the refusal.
            for (k, _) in &deletes {
                rep.deleted(k, None, true);
            }
        }
        if !merge.saw_local {
            bail!(Refused::EmptyTree(format!(
                "refusing to delete {} objects under {}: {} has nothing to mirror (is it \
                 mounted? is it the right directory?); nothing was deleted",
                deletes.len(),
                cfg.dest,
                cfg.dir.display()
            )));
        }
        if let Some(max) = cfg.max_delete {
            if deletes.len() as u64 > max {
                bail!(Refused::MaxDelete {
                    count: deletes.len(),
                    message: format!(
                        "refusing to delete {} objects under {}: more than --max-delete {max}; \
                         nothing was deleted (raise --max-delete if this is intended)",
                        deletes.len(),
                        cfg.dest
                    )
                });
            }
        }
        if let Some(why) = &merge.blind {
            rep.warn(&format!(
                "not deleting {} objects: part of {} could not be read ({why}), so their \
                 files may still exist",
                deletes.len(),
                cfg.dir.display()
            ));
        } else if upload_failures > 0 {
            // A failed upload may be a renamed file: deleting its old name
            // now would leave the content under neither name.
            rep.warn(&format!(
                "not deleting {} objects because {upload_failures} uploads failed; fix them \
                 and run again",
                deletes.len()
            ));
            deletes_left.extend(deletes.into_iter().map(|(k, _)| k));
        } else {
            delete_all(store, cfg, rep, state, stop, &deletes, deletes_left).await?;
        }
    }
    state.flush();
    if let Some(w) = &state.broken {
        rep.warn(w);
    }
    let status = if stop.requested() {
        Status::Interrupted
    } else if rep.failures() > failures_before {
        Status::Partial
    } else {
        Status::Done
    };
    // A complete listing, merged without trouble: the database now stands
    // for the bucket, for --trust-state.
    if trusted.is_none() && matches!(status, Status::Done) && !cfg.dry_run {
        let now = crate::status::secs(std::time::SystemTime::now());
        state.set_meta(FULL_LISTING, &now.to_string());
    }
    if restyling && matches!(status, Status::Done) && !cfg.dry_run {
        state.set_meta(HEADER_RULES, &rules);
        state.set_meta(HEADER_RULES_PENDING, "[]");
    }
    Ok(status)
}

/// The meta key of the header rules every object was last written with.
const HEADER_RULES: &str = "header_rules";
/// The meta key of the header rules of runs since that did not complete
/// (a JSON list of rule sets): some objects may have theirs.
const HEADER_RULES_PENDING: &str = "header_rules_pending";

/// The local walk, on a blocking thread, in key order.
pub fn spawn_walk(
    cfg: &SyncConfig,
    filter: &Filter,
) -> (tokio::task::JoinHandle<()>, Batches<ScanItem>) {
    let (tx, rx) = crate::batch::channel::<ScanItem>(8);
    let dir = cfg.dir.clone();
    let prefix = cfg.dest.prefix.clone();
    let filter = filter.clone();
    let follow = cfg.filter.follow_symlinks;
    let threads = cfg.filter.walk_threads;
    let walker = tokio::task::spawn_blocking(move || {
        tx.feed_blocking(|push| scan::walk(&dir, &prefix, &filter, follow, threads, push))
    });
    (walker, rx)
}

/// One object of a listing, or why the listing stopped.
pub type Listed = Result<ObjectInfo, StoreError>;

/// The meta key of the time of the last full listing that a reconcile
/// completed with (Unix seconds).
const FULL_LISTING: &str = "full_listing";

/// With `--trust-state`, when the state database may stand for the bucket:
/// a full listing completed within `--full-check-every`, no record is
/// unsure, and nothing asks to look at every object. Returns when that
/// listing was.
fn trusted_since(
    state: &mut State,
    cfg: &SyncConfig,
    recheck: &Recheck,
) -> Option<std::time::SystemTime> {
    let every = cfg.trust_state?;
    if cfg.checksum || matches!(recheck, Recheck::All) || state.broken.is_some() {
        return None;
    }
    let at =
        std::time::UNIX_EPOCH + Duration::from_secs(state.meta(FULL_LISTING)?.parse::<u64>().ok()?);
    let age = std::time::SystemTime::now().duration_since(at).ok()?;
    (age < every && !state.has_unsure_under(&cfg.dest.prefix)).then_some(at)
}

/// The records of the state database under `prefix`, as a listing would
/// give them (key order), read beside the run's own connection.
fn spawn_state_listing(
    db: PathBuf,
    prefix: String,
) -> (tokio::task::JoinHandle<()>, Batches<Listed>) {
    let (tx, rx) = crate::batch::channel::<Listed>(8);
    let task = tokio::task::spawn_blocking(move || {
        tx.feed_blocking(|push| {
            let read = state::each_record(&db, &prefix, 5000, |key, size, etag| {
                let o = ObjectInfo {
                    key,
                    size,
                    etag,
                    last_modified: None,
                    archived: false,
                };
                push(Ok(o))
            });
            if let Err(e) = read {
                push(Err(StoreError::Other(format!(
                    "cannot read the state database for --trust-state: {e:#}"
                ))));
            }
        })
    });
    (task, rx)
}

/// Fewer keys on record than this are listed in one chain of pages.
const PARTITION_MIN_KEYS: u64 = 4_000;
/// Ranges listed at once, at most.
const PARTITIONS: u64 = 32;
/// About this many keys per range (two pages of AWS's 1,000).
const KEYS_PER_PARTITION: u64 = 2_000;
/// Ranges listed at the same time; the next starts as the first is done.
/// A server that walks its store for each listing request (as s3s-fs
/// does) would otherwise get too many such requests at once, and time out.
const RANGES_AT_ONCE: usize = 8;

/// Where to split the listing of `cfg.dest`: keys the state database holds
/// there, so that each range has about as many keys. None for a small
/// prefix (one chain of pages is as fast).
pub fn listing_boundaries(state: &mut State, cfg: &SyncConfig) -> Vec<String> {
    let n = state.count_under(&cfg.dest.prefix);
    if n < PARTITION_MIN_KEYS {
        return Vec::new();
    }
    let parts = (n / KEYS_PER_PARTITION).clamp(2, PARTITIONS) as usize;
    state.boundaries(&cfg.dest.prefix, parts, n)
}

/// Lists the destination in key order. With `boundaries` (keys in order),
/// the key space is cut at them and the ranges are listed concurrently
/// ([`RANGES_AT_ONCE`] at a time),
/// each from `StartAfter` its lower boundary up to its upper one, and
/// handed on in order: a long listing costs about one range's chain of
/// round trips instead of all of them. The ranges cover every key
/// whatever the boundaries are, so a stale database only makes them
/// uneven.
pub fn spawn_listing(
    store: &Store,
    cfg: &SyncConfig,
    boundaries: Vec<String>,
) -> (tokio::task::JoinHandle<()>, Batches<Listed>) {
    let (tx, rx) = crate::batch::channel::<Listed>(8);
    let mut lows: Vec<Option<String>> = vec![None];
    lows.extend(boundaries.iter().cloned().map(Some));
    let mut highs: Vec<Option<String>> = boundaries.into_iter().map(Some).collect();
    highs.push(None);
    let mut waiting: std::collections::VecDeque<_> = lows
        .into_iter()
        .zip(highs)
        .map(|(low, high)| {
            let lister = store
                .lister(&cfg.dest.bucket, &cfg.dest.prefix, None)
                .page_size(LIST_PAGE)
                .start_after(low);
            (lister, high)
        })
        .collect();
    let start = |(lister, high)| {
        // Two pages ahead per range: memory stays bounded.
        let (rtx, rrx) = mpsc::channel(2 * LIST_PAGE as usize);
        (tokio::spawn(list_range(lister, high, rtx)), rrx)
    };
    let first = waiting.len().min(RANGES_AT_ONCE);
    let mut listing: std::collections::VecDeque<_> = waiting.drain(..first).map(start).collect();
    let task = tokio::spawn(async move {
        let mut buf = Vec::new();
        'ranges: while let Some((range, mut rrx)) = listing.pop_front() {
            while let Some(item) = rrx.recv().await {
                let failed = item.is_err();
                if !tx.push(&mut buf, item).await {
                    return;
                }
                if failed {
                    break 'ranges;
                }
            }
            let _ = range.await;
            if let Some(next) = waiting.pop_front() {
                listing.push_back(start(next));
            }
        }
        tx.flush(buf).await;
    });
    (task, rx)
}

/// One range of a listing: every key after the lister's start up to and
/// including `high`.
async fn list_range(
    mut lister: crate::store::Lister,
    high: Option<String>,
    tx: mpsc::Sender<Result<ObjectInfo, StoreError>>,
) {
    loop {
        match lister.next_page().await {
            Ok(Some(page)) => {
                for o in page.objects {
                    if high.as_ref().is_some_and(|h| o.key > *h) {
                        return;
                    }
                    if tx.send(Ok(o)).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Runs the deletions in batches of 1,000 (the DeleteObjects limit).
/// Keys it could not delete go to `left`.
async fn delete_all(
    store: &Store,
    cfg: &SyncConfig,
    rep: &Reporter,
    state: &mut State,
    stop: &Stop,
    deletes: &[(String, u64)],
    left: &mut Vec<String>,
) -> Result<()> {
    for batch in deletes.chunks(DELETE_BATCH) {
        if stop.requested() {
            return Ok(());
        }
        if cfg.dry_run {
            for (k, _) in batch {
                rep.deleted(k, None, true);
            }
            continue;
        }
        // A crash before the answer must not leave records of objects
        // that are gone.
        state.mark_unsure_all(batch.iter().map(|(k, _)| k.as_str()));
        let done = delete_keys(store, &cfg.dest, batch, cfg.transfer.backup.as_ref()).await;
        match &done.error {
            Some(e) if e.is_fatal() => {
                return Err(anyhow!(e.clone()))
                    .with_context(|| format!("cannot delete from {}", cfg.dest))
            }
            _ => {
                done.record(rep, state);
                for (k, msg) in done.failures() {
                    rep.failed(k, &msg);
                    left.push(k.to_string());
                }
            }
        }
    }
    Ok(())
}

/// Keys per DeleteObjects request, at most (S3's limit).
pub const DELETE_BATCH: usize = 1000;

/// What a run of deletions did: which keys are gone, which the server
/// refused (with its message), and the error that stopped it, if any (the
/// keys after it were not tried).
#[derive(Debug, Default)]
pub struct Deleted {
    pub gone: Vec<(String, u64)>,
    pub refused: Vec<(String, String)>,
    pub untried: Vec<(String, u64)>,
    pub error: Option<StoreError>,
    pub elapsed: Duration,
}

impl Deleted {
    /// Reports each deleted key and takes it off the state database.
    pub fn record(&self, rep: &Reporter, state: &mut State) {
        for (k, size) in &self.gone {
            rep.deleted(k, Some((*size, self.elapsed)), false);
            state.remove(k);
        }
        state.flush();
    }

    /// Every key still there: refused by the server (with its message), or
    /// left untried by the error that stopped the deletions.
    pub fn failures(&self) -> Vec<(&str, String)> {
        let mut out: Vec<(&str, String)> = self
            .refused
            .iter()
            .map(|(k, msg)| (k.as_str(), format!("cannot delete: {msg}")))
            .collect();
        if let Some(e) = &self.error {
            out.extend(
                self.untried
                    .iter()
                    .map(|(k, _)| (k.as_str(), format!("cannot delete: {e}"))),
            );
        }
        out
    }
}

/// Deletes `keys` (with their sizes, for the report) in batches.
pub async fn delete_keys(
    store: &Store,
    dest: &Location,
    keys: &[(String, u64)],
    backup: Option<&Backup>,
) -> Deleted {
    let started = std::time::Instant::now();
    let bucket = dest.bucket.as_str();
    let mut out = Deleted::default();
    for (i, batch) in keys.chunks(DELETE_BATCH).enumerate() {
        // With --backup-prefix, only what is kept there is deleted.
        let kept;
        let batch = match backup {
            None => batch,
            Some(b) => match keep(store, dest, b, batch, &mut out.refused).await {
                Ok(k) => {
                    kept = k;
                    &kept[..]
                }
                Err(e) => {
                    out.untried = keys[i * DELETE_BATCH..].to_vec();
                    out.error = Some(e);
                    break;
                }
            },
        };
        if batch.is_empty() {
            continue;
        }
        let names: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
        match store.delete_batch(bucket, &names).await {
            Ok(failed) => {
                let failed: std::collections::HashMap<String, String> =
                    failed.into_iter().collect();
                for (k, size) in batch {
                    match failed.get(k) {
                        Some(msg) => out.refused.push((k.clone(), msg.clone())),
                        None => out.gone.push((k.clone(), *size)),
                    }
                }
            }
            Err(e) => {
                out.untried = keys[i * DELETE_BATCH..].to_vec();
                out.error = Some(e);
                break;
            }
        }
    }
    out.elapsed = started.elapsed();
    out
}

/// Copies each of `batch` to the backup location, some at once; returns
/// those kept (or gone already), and puts the others in `refused`. An error
/// of the server's stops it.
async fn keep(
    store: &Store,
    dest: &Location,
    backup: &Backup,
    batch: &[(String, u64)],
    refused: &mut Vec<(String, String)>,
) -> Result<Vec<(String, u64)>, StoreError> {
    let now = std::time::SystemTime::now();
    let mut kept = Vec::with_capacity(batch.len());
    for some in batch.chunks(KEEP_AT_ONCE) {
        let mut copies = tokio::task::JoinSet::new();
        for (i, (key, _)) in some.iter().enumerate() {
            let rel = dest.rel_of(key).unwrap_or(key);
            let to = backup.key_for(rel, now);
            let (store, from, bucket) = (
                store.clone(),
                (dest.bucket.clone(), key.clone()),
                backup.at.bucket.clone(),
            );
            copies.spawn(async move {
                let done = store.copy_as_is((&from.0, &from.1), &bucket, &to).await;
                (i, done)
            });
        }
        let mut results = Vec::with_capacity(some.len());
        while let Some(r) = copies.join_next().await {
            results.push(r.map_err(|e| StoreError::Other(format!("a backup copy failed: {e}")))?);
        }
        results.sort_by_key(|(i, _)| *i);
        for (i, done) in results {
            let (key, size) = &some[i];
            match done {
                Ok(_) => kept.push((key.clone(), *size)),
                Err(e) if e.blame() == Blame::Request => refused.push((
                    key.clone(),
                    format!("not deleted: it could not be kept in {}: {e}", backup.at),
                )),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(kept)
}

/// Backup copies made at once before a batch of deletions.
const KEEP_AT_ONCE: usize = 16;

/// One step of the merge of the walk with the listing, in key order.
pub enum Pair {
    /// A file to mirror, with the object at its key when there is one.
    File {
        key: String,
        file: LocalFile,
        object: Option<ObjectInfo>,
    },
    /// An object with no file (excluded and kept paths left out).
    Extra(ObjectInfo),
}

/// The merge's view of both streams.
#[derive(Default)]
pub struct Merge {
    kept: Kept,
    pub saw_local: bool,
    /// Set when part of the tree could not be read at all.
    pub blind: Option<String>,
    deletes: Vec<(String, u64)>,
    last_local: Option<String>,
    last_remote: Option<String>,
    /// The next item of each stream, once the first has been read.
    local: Option<(String, LocalFile)>,
    remote: Option<ObjectInfo>,
    primed: bool,
}

impl Merge {
    /// Whether an object under the prefix has no business in the mirror:
    /// its path exists but is not mirrored (kept), or is excluded.
    fn not_mirrored(&self, filter: &Filter, rel: &str) -> bool {
        self.kept.covers(rel) || filter.excludes_key(rel)
    }

    /// The next step of the merge; `None` when both streams are done.
    pub async fn next_pair(
        &mut self,
        lrx: &mut Batches<ScanItem>,
        rrx: &mut Batches<Listed>,
        cfg: &SyncConfig,
        rep: &Reporter,
        filter: &Filter,
    ) -> Result<Option<Pair>> {
        if !self.primed {
            self.local = self.next_local(lrx, cfg, rep).await?;
            self.remote = self.next_remote(rrx, cfg).await?;
            self.primed = true;
        }
        loop {
            let take_local = match (&self.local, &self.remote) {
                (None, None) => return Ok(None),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((lk, _)), Some(r)) => lk.as_str() <= r.key.as_str(),
            };
            if !take_local {
                let Some(r) = self.remote.take() else {
                    return Ok(None);
                };
                self.remote = self.next_remote(rrx, cfg).await?;
                let rel = cfg.dest.rel_of(&r.key).unwrap_or(&r.key);
                if self.not_mirrored(filter, rel) {
                    continue;
                }
                return Ok(Some(Pair::Extra(r)));
            }
            let Some((key, file)) = self.local.take() else {
                return Ok(None);
            };
            let object = self.remote.take_if(|r| r.key == key);
            if object.is_some() {
                self.remote = self.next_remote(rrx, cfg).await?;
            }
            self.local = self.next_local(lrx, cfg, rep).await?;
            return Ok(Some(Pair::File { key, file, object }));
        }
    }

    /// The next file from the walk, reporting skips and problems on the way.
    async fn next_local(
        &mut self,
        rx: &mut Batches<ScanItem>,
        cfg: &SyncConfig,
        rep: &Reporter,
    ) -> Result<Option<(String, LocalFile)>> {
        loop {
            let Some(item) = rx.recv().await else {
                return Ok(None);
            };
            // What the filters leave out, and what vanished, prove nothing
            // is mounted there: only what is mirrored or kept counts.
            self.saw_local |= !matches!(item, ScanItem::Excluded { .. } | ScanItem::Note { .. });
            match item {
                ScanItem::File(f) => {
                    let key = cfg.dest.key_for(&f.rel);
                    if let Some(prev) = &self.last_local {
                        if key <= *prev {
                            bail!(
                                "the directory walk yielded '{key}' after '{prev}', out of key \
                                 order; stopping before anything is deleted"
                            );
                        }
                    }
                    self.last_local = Some(key.clone());
                    return Ok(Some((key, f)));
                }
                ScanItem::Kept {
                    rel,
                    dir,
                    message,
                    problem,
                } => {
                    let shown = cfg.dir.join(&rel).display().to_string();
                    if problem {
                        rep.failed(&shown, &message);
                    } else {
                        rep.note(&shown, &message);
                    }
                    self.kept.add(rel, dir);
                }
                ScanItem::Problem { path, message } => {
                    rep.failed(&path.to_string_lossy(), &message);
                }
                ScanItem::Blind { path, message } => {
                    rep.failed(&path.to_string_lossy(), &message);
                    self.blind.get_or_insert(message);
                }
                ScanItem::Note {
                    path,
                    message,
                    skipped,
                } => {
                    let path = path.to_string_lossy();
                    if skipped {
                        rep.note(&path, &message)
                    } else {
                        rep.remark(&path, &message)
                    }
                }
                ScanItem::Excluded { rel, dir, why } => {
                    let key = cfg.dest.key_for(&rel);
                    rep.skipped(&if dir { key + "/" } else { key }, why);
                }
            }
        }
    }

    /// The next object from the listing, checking the byte order the merge
    /// relies on.
    async fn next_remote(
        &mut self,
        rx: &mut Batches<Listed>,
        cfg: &SyncConfig,
    ) -> Result<Option<ObjectInfo>> {
        loop {
            let o = match rx.recv().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(anyhow!(e)).with_context(|| format!("cannot list {}", cfg.dest))
                }
                Some(Ok(o)) => o,
            };
            if let Some(prev) = &self.last_remote {
                if o.key <= *prev {
                    bail!(
                        "the server listed '{}' after '{}': keys are not in byte order, so the \
                         listing cannot be compared safely",
                        o.key,
                        prev
                    );
                }
            }
            self.last_remote = Some(o.key.clone());
            // Folder markers made by consoles have no local twin.
            if !o.key.ends_with('/') {
                return Ok(Some(o));
            }
        }
    }
}
