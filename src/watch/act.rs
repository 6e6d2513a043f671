//! Acting on due paths: each is looked at as it is now, whatever its
//! events said, and gets what it needs.
//!
//! - A file is uploaded through the same transfer code as `sync`, or, when
//!   it is a rename, copied on the server from its old object, but only
//!   when that is safe: the old object is on record with this very size
//!   and mtime, nothing exists at the old path any more (so nothing will
//!   write it), and no task is writing it (the copy then claims it as
//!   read, so nothing writes it until the copy is done). Otherwise it is
//!   uploaded from the file.
//! - A directory is walked (its files may predate its watch); one that
//!   appeared is walked again a quiet window later, for files made in it
//!   before its watch existed, and its files are checked whatever the
//!   records say (a directory moved in may hold other files of the same
//!   sizes and mtimes).
//! - A path that is gone has its object, and the objects under it,
//!   deleted with `--delete`, batched into one request; not while a copy
//!   from it is still to come, not while the root is missing or empty, and
//!   not beyond `--max-delete` per window (held instead). "Gone" means the
//!   file system says so (not found); a path that cannot be looked at is
//!   retried, never deleted.
//!
//! Before any task that writes or deletes a key starts, the state database
//! marks its record unsure (a crash cannot leave a record the object no
//! longer matches), and a key without a record is noted in `maybe` until
//! its outcome is known.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::OwnedSemaphorePermit;

use super::claims::Claim;
use super::finish::{Batch, Finished};
use super::pending::Mark;
use super::root::Health;
use super::{Daemon, ROOT_POLL};
use crate::plan::Decision;
use crate::scan::{self, LocalFile, ScanItem};
use crate::sync;
use crate::transfer::{Job, MAX_COPY};

/// How long a primary-copying destination waits for the primary to hold a
/// changed file of `size` bytes before it uploads the file itself: 5
/// minutes, plus the time the primary needs to send it at 1 MiB/s.
pub fn primary_wait(size: u64) -> Duration {
    Duration::from_secs(300 + size / (1 << 20))
}

/// Does the file system say nothing is at `path` (not a failure to look)?
fn absent(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
        ),
    }
}

/// Deletions gathered in one dispatch, sent as one task.
#[derive(Default)]
pub struct Deletions {
    batch: Batch,
    permit: Option<OwnedSemaphorePermit>,
    /// The root, looked at once per dispatch that deletes.
    root: Option<Health>,
}

/// Why a deletion cannot be added to the batch now.
enum NotNow {
    /// A task holds one of the keys.
    Busy,
    /// The root is missing or empty.
    Root,
    /// Over the `--max-delete` cap: held.
    Held,
}

impl Daemon<'_> {
    /// Starts what is due, as far as request permits allow.
    pub(super) fn dispatch(&mut self) {
        let now = Instant::now();
        if self.gate.closed(now) {
            return;
        }
        let mut deletions = Deletions::default();
        loop {
            let Ok(permit) = self.session.requests.clone().try_acquire_owned() else {
                break;
            };
            let Some(rel) = self.inbox.pending.pop_due(now) else {
                break;
            };
            self.act(rel, now, permit, &mut deletions);
            if deletions.batch.keys.len() >= sync::DELETE_BATCH {
                self.spawn_deletions(&mut deletions);
            }
        }
        self.spawn_deletions(&mut deletions);
    }

    /// Looks at one due path (in flight from now) and acts on it.
    fn act(
        &mut self,
        rel: String,
        now: Instant,
        permit: OwnedSemaphorePermit,
        deletions: &mut Deletions,
    ) {
        let path = self.sync.dir.join(&rel);
        let meta = if self.sync.filter.follow_symlinks {
            std::fs::metadata(&path)
        } else {
            std::fs::symlink_metadata(&path)
        };
        let meta = match meta {
            Ok(m) => m,
            // Not there, or a file where a directory on its path was.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return self.gone(rel, now, permit, deletions)
            }
            Err(e) => {
                return self.retry_later(
                    &rel,
                    &path.display().to_string(),
                    &format!("cannot read: {e}"),
                )
            }
        };
        if self.session.filter.excludes_path(&rel, meta.is_dir())
            || self.session.filter.other_file_system(&meta)
        {
            return self.settle(&rel);
        }
        if meta.is_dir() {
            return self.walk_dir(&rel, &path, now, deletions);
        }
        if !meta.is_file() {
            let what = if meta.file_type().is_symlink() {
                "symlink skipped (pass --follow-symlinks to upload what it points to)"
            } else {
                "skipped: not a regular file"
            };
            self.rep.note(&path.display().to_string(), what);
            return self.settle(&rel);
        }
        let file = LocalFile {
            rel: rel.clone(),
            path,
            size: meta.len(),
            mtime_ns: scan::mtime_ns(&meta),
        };
        self.file(file, now, permit, deletions)
    }

    /// Puts a path back until `due` (it stays pending, not in flight).
    fn defer(&mut self, rel: &str, due: Instant, why: &str) {
        if self.rep.debugging() {
            let ms = due.saturating_duration_since(Instant::now()).as_millis();
            self.rep.debug(&format!("{rel} waits {ms} ms: {why}"));
        }
        self.inbox.pending.set_due(rel, due);
        self.inbox.pending.land(rel);
    }

    /// A path that waits for a key another task holds: looked at again
    /// when a task lets go of a key at or under it (or after a second).
    fn block(&mut self, rel: &str, now: Instant, why: &str) {
        self.blocked.insert(rel.to_string());
        self.defer(rel, now + Duration::from_secs(1), why);
    }

    /// Puts `rel` back for the reason a deletion could not go now.
    fn not_now(&mut self, rel: &str, now: Instant, why: NotNow) {
        match why {
            NotNow::Busy => self.block(rel, now, "objects at or under it are being written"),
            NotNow::Root => self.defer(rel, now + ROOT_POLL, "the root is missing or empty"),
            // Looked at again when it changes (or a window later, still
            // held); pending and journaled meanwhile.
            NotNow::Held => {
                let window = self.budget.window();
                self.defer(rel, now + window, "deletion held (--max-delete)")
            }
        }
    }

    /// Checks that `keys` may be deleted now, and spends them from the
    /// `--max-delete` budget if so.
    fn may_delete(
        &mut self,
        rel: &str,
        keys: &[(String, u64)],
        now: Instant,
        deletions: &mut Deletions,
    ) -> Result<(), NotNow> {
        if !self.tasks.claims.free(&claim_of(keys)) {
            return Err(NotNow::Busy);
        }
        if *deletions.root.get_or_insert_with(|| self.check_root()) != Health::Present {
            return Err(NotNow::Root);
        }
        let n = keys.iter().filter(|(k, _)| !deletions.batch.has(k)).count() as u64;
        if self.budget.allows(n, now) {
            self.budget.spend(n, now);
            return Ok(());
        }
        self.budget.hold(rel, n);
        Err(NotNow::Held)
    }

    fn file(
        &mut self,
        file: LocalFile,
        now: Instant,
        permit: OwnedSemaphorePermit,
        deletions: &mut Deletions,
    ) {
        let rel = file.rel.clone();
        let timing = self.inbox.pending.timing();
        let Some(entry) = self.inbox.pending.get(&rel) else {
            return;
        };
        // Still being written (no close seen): wait until it has been quiet
        // a whole window, but not past the longest delay.
        let deadline = entry.deadline(timing);
        if !entry.complete() && deadline.is_none_or(|d| d > now) {
            let mtime = UNIX_EPOCH + Duration::from_nanos(file.mtime_ns.max(0) as u64);
            if let Ok(age) = SystemTime::now().duration_since(mtime) {
                if age < timing.debounce {
                    let quiet = now + (timing.debounce - age);
                    let due = deadline.map_or(quiet, |d| quiet.min(d));
                    return self.defer(&rel, due, "still being written");
                }
            }
        }
        let key = self.sync.dest.key_for(&rel);
        if !self.tasks.claims.writable(&key) || deletions.batch.has(&key) {
            return self.block(&rel, now, "its key is being written or read");
        }
        if self.sync.delete {
            // A directory replaced by this file leaves objects under it;
            // the file waits for them to be deleted (or no longer held).
            let stale = self.stale_under(&key);
            if !stale.is_empty() {
                if let Err(why) = self.may_delete(&rel, &stale, now, deletions) {
                    return self.not_now(&rel, now, why);
                }
                self.mark_deleting(&stale);
                deletions.batch.sweep(&rel, stale);
            }
        }
        let record = self.session.state.get(&key);
        let copy_from = self.inbox.pending.take_copy_from(&rel);
        let source = copy_from.as_deref().and_then(|from| {
            let from_key = self.sync.dest.key_for(from);
            if from_key == key || file.size > MAX_COPY {
                return None;
            }
            // Something at the old path (or something that cannot be
            // looked at) may be written to the old key: the copy could
            // read either version.
            if !absent(&self.sync.dir.join(from)) {
                return None;
            }
            if !self.tasks.claims.readable(&from_key) || deletions.batch.has(&from_key) {
                return None;
            }
            let src = self.session.state.get(&from_key)?;
            (src.size == file.size && src.mtime_ns == file.mtime_ns).then_some((from_key, src))
        });
        // The primary's upload may be under way: wait a while for it, to
        // copy it then; after that, upload from the file.
        let waited_enough = |since: Instant| now.duration_since(since) >= primary_wait(file.size);
        let wait_for_primary = self.sync.copy_from.is_some()
            && !self
                .inbox
                .pending
                .get(&rel)
                .and_then(|e| e.notes.behind)
                .is_some_and(|(since, _)| waited_enough(since));
        let decision = match &record {
            None => Decision::Upload("new"),
            Some(r) if r.size != file.size => Decision::Upload("changed"),
            Some(r) if r.mtime_ns != file.mtime_ns => Decision::Verify { head: false },
            Some(_) => Decision::Hash,
        };
        sync::before_write(&mut self.session.state, &key, record.as_ref());
        self.maybe.entry(key.clone()).or_insert(file.size);
        let claim = Claim {
            writes: vec![key.clone()],
            reads: source.iter().map(|(k, _)| k.clone()).collect(),
        };
        let job = Job {
            file: file.clone(),
            key: key.clone(),
            decision,
            remote: None,
            state: record,
            wait_for_primary,
            // New header rules reach objects by the reconcile at start; a
            // chmod or chown (--metadata) by a metadata replace.
            restyle: self.sync.transfer.metadata
                && crate::attrs::changed(&mut self.session.state, &key, &file.path),
        };
        let up = self.session.uploader.clone();
        let from = source.as_ref().and(copy_from);
        self.inbox.pending.covered(&rel);
        self.tasks.spawn(vec![rel.clone()], claim, async move {
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
                copy_from: from,
            }
        });
    }

    /// A directory appeared (created, moved in, renamed) or changed: its
    /// files may predate its watch, so walk it. A renamed one's files are
    /// copied from their old objects.
    fn walk_dir(&mut self, rel: &str, path: &Path, now: Instant, deletions: &mut Deletions) {
        let Some(entry) = self.inbox.pending.get(rel) else {
            return;
        };
        let quiet = self.cfg.timing.debounce.max(Duration::from_millis(100));
        // The second walk comes a whole quiet window after the first, even
        // when an event (the rename's other half) asks for it sooner: the
        // kernel's events of that window may name the directory's old
        // path, or none at all.
        if let Some(first) = entry.notes.walked {
            if now < first + quiet {
                let again = first + quiet;
                return self.defer(rel, again, "walked once; once more after a quiet window");
            }
        }
        // Its files are new at their names: the records of what was there
        // before say nothing of them. (A second walk only looks for what
        // the first could not see yet.)
        let appeared = entry.appeared() && entry.notes.walked.is_none();
        // A directory replacing a file, or a directory replaced by a new
        // one: the file's object and the old files' objects go.
        let mut sweep = Vec::new();
        if self.sync.delete {
            let key = self.sync.dest.key_for(rel);
            sweep = self.stale_under(&key);
            if let Some(size) = self.known(&key) {
                sweep.push((key, size));
            }
            if !sweep.is_empty() {
                if let Err(why) = self.may_delete(rel, &sweep, now, deletions) {
                    return self.not_now(rel, now, why);
                }
            }
        }
        let copy_from = self.inbox.pending.take_copy_from(rel);
        let mut found = Vec::new();
        let mut problems = Vec::new();
        scan::walk_under(
            &self.sync.dir,
            path,
            &self.sync.dest.prefix,
            &self.session.filter,
            self.sync.filter.follow_symlinks,
            self.sync.filter.walk_threads,
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
                    // What a walk leaves out is no news at each change.
                    ScanItem::Excluded { .. } => {}
                    ScanItem::Note { path, message, .. } => {
                        problems.push((path.display().to_string(), message, false))
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
            // Pending already: its own events decide when it goes (a walk
            // must not push it back); a rename only gives it its source.
            if let Some(e) = self.inbox.pending.get(&f.rel) {
                if from.is_some() && e.copy_from().is_none() {
                    self.inbox.pending.set_copy_from(&f.rel, from);
                }
                continue;
            }
            // Already mirrored as it is (an event on a directory that did
            // not change its files, say): nothing to do.
            let key = self.sync.dest.key_for(&f.rel);
            let on_record = self
                .session
                .state
                .get(&key)
                .is_some_and(|r| r.size == f.size && r.mtime_ns == f.mtime_ns);
            if on_record && !appeared && from.is_none() {
                continue;
            }
            // Moved in whole, when this is the first walk after the move; a
            // new directory's files, or files found by a second walk (made
            // there since), may still be written.
            let mark = Mark {
                complete: from.is_some() && appeared,
                appeared,
            };
            if self.inbox.pending.touch(&f.rel, now, mark) {
                self.inbox.new.push(f.rel.clone());
            }
            if from.is_some() {
                self.inbox.pending.set_copy_from(&f.rel, from);
            }
        }
        if !sweep.is_empty() {
            self.mark_deleting(&sweep);
            deletions.batch.sweep(rel, sweep);
        }
        self.inbox.journal_new();
        if appeared {
            // Once more, a quiet window later: a file made in it (or in a
            // directory under it) before its watch existed has no event.
            if let Some(notes) = self.inbox.pending.notes_mut(rel) {
                notes.walked = Some(now);
            }
            return self.defer(
                rel,
                now + quiet,
                "walked once; once more after a quiet window",
            );
        }
        // The directory itself is settled once its files are journaled.
        self.settle(rel);
    }

    /// A path that no longer exists: with `--delete`, its object (and, for
    /// a directory, the objects under it) go too.
    fn gone(
        &mut self,
        rel: String,
        now: Instant,
        permit: OwnedSemaphorePermit,
        deletions: &mut Deletions,
    ) {
        // Nothing is there to be copied to: a copy this path was to get is
        // moot (and must not pin its source, which may be waiting on this
        // very path's pin, as after two directories were swapped and both
        // removed).
        self.inbox.pending.take_copy_from(&rel);
        if !self.sync.delete || self.session.filter.excludes_key(&rel) {
            return self.settle(&rel);
        }
        // A renamed file's old object stays until its copy has started
        // (the copy's claim protects it from then on).
        if self.inbox.pending.pinned(&rel) {
            return self.block(&rel, now, "a renamed file will be copied from it");
        }
        let key = self.sync.dest.key_for(&rel);
        let mut keys = self.stale_under(&key);
        if let Some(size) = self.known(&key) {
            keys.push((key, size));
        }
        if keys.is_empty() {
            return self.settle(&rel);
        }
        if let Err(why) = self.may_delete(&rel, &keys, now, deletions) {
            return self.not_now(&rel, now, why);
        }
        self.mark_deleting(&keys);
        deletions.batch.remove(&rel, keys);
        deletions.permit.get_or_insert(permit);
    }

    /// Is an object at `key` known or possibly there (written by a task
    /// with no record yet, or listed by a reconcile)? Its size when known.
    /// Without a working state database, any key may be there.
    fn known(&mut self, key: &str) -> Option<u64> {
        match self.session.state.known(key) {
            Some(size) => Some(size),
            None if self.session.state.broken.is_some() => Some(0),
            None => self.maybe.get(key).copied(),
        }
    }

    /// Keys under the key `dir` (on record, or possibly written) whose
    /// files are gone and not excluded: what a removed or replaced
    /// directory leaves behind.
    fn stale_under(&mut self, dir: &str) -> Vec<(String, u64)> {
        let under = format!("{dir}/");
        let mut keys: BTreeMap<String, u64> = self
            .maybe
            .range(under.clone()..)
            .take_while(|(k, _)| k.starts_with(&under))
            .map(|(k, size)| (k.clone(), *size))
            .collect();
        keys.extend(self.session.state.keys_under(dir));
        keys.into_iter()
            .filter(|(k, _)| {
                self.sync.dest.rel_of(k).is_some_and(|sub| {
                    absent(&self.sync.dir.join(sub)) && !self.session.filter.excludes_key(sub)
                })
            })
            .collect()
    }

    /// Keys about to be deleted: their records stop vouching for objects
    /// first, so a crash before the answer cannot leave a record of an
    /// object that is gone.
    fn mark_deleting(&mut self, keys: &[(String, u64)]) {
        self.session
            .state
            .mark_unsure_all(keys.iter().map(|(k, _)| k.as_str()));
    }

    /// Sends the batch gathered so far (the look at the root stays for
    /// the rest of the dispatch).
    fn spawn_deletions(&mut self, deletions: &mut Deletions) {
        let batch = std::mem::take(&mut deletions.batch);
        let permit = deletions.permit.take();
        if batch.keys.is_empty() {
            // Nothing to delete after all: the paths gathered are done.
            for rel in batch.settles() {
                self.settle(&rel);
            }
            return;
        }
        let permit = match permit {
            Some(p) => Some(p),
            None => self.session.requests.clone().try_acquire_owned().ok(),
        };
        let claim = claim_of(&batch.keys);
        let store = self.session.store.clone();
        let dest = self.sync.dest.clone();
        let backup = self.sync.transfer.backup.clone();
        let rels = batch.rels();
        self.tasks.spawn(rels, claim, async move {
            let done = sync::delete_keys(&store, &dest, &batch.keys, backup.as_ref()).await;
            drop(permit);
            Finished::Deleted { batch, done }
        });
    }

    /// A problem with one path: try it again later, saying so now and then.
    pub(super) fn retry_later(&mut self, rel: &str, what: &str, message: &str) {
        let Some(notes) = self.inbox.pending.notes_mut(rel) else {
            return;
        };
        notes.attempts = notes.attempts.saturating_add(1);
        let attempts = notes.attempts;
        let wait = self.gate.retry_after(attempts);
        self.defer(rel, Instant::now() + wait, message);
        if let Some(m) = self.quiet.pass(&format!("{what}: {message}")) {
            self.rep.failed(
                what,
                &format!("{}; retrying", m.trim_start_matches(&format!("{what}: "))),
            );
        }
    }
}

/// The claim of a deletion of `keys`.
fn claim_of(keys: &[(String, u64)]) -> Claim {
    Claim {
        writes: keys.iter().map(|(k, _)| k.clone()).collect(),
        reads: Vec::new(),
    }
}
