//! A task's result settles its path, or brings it back.
//!
//! Transfers conclude through `sync::conclude`, as in `sync` (the same
//! report lines, the same records); then who is to blame decides: a
//! failure of the server closes the gate for all (one probe per backoff
//! step while an endpoint is down), a failure about the file retries that
//! file alone. A path that changed while its task ran stays pending.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::claims::Claim;
use super::pending::Mark;
use super::Daemon;
use crate::scan::LocalFile;
use crate::store::Blame;
use crate::sync::{self, Concluded, Deleted};
use crate::transfer::Outcome;

/// How often a destination that copies from the primary looks at it, at
/// most, while it waits for the primary to hold a file.
const PRIMARY_POLL: Duration = Duration::from_secs(5);

/// What a task hands back.
pub enum Finished {
    File {
        rel: String,
        key: String,
        file: LocalFile,
        outcome: Outcome,
        /// The path it was to be copied from, when a copy was tried.
        copy_from: Option<String>,
    },
    Deleted {
        batch: Batch,
        done: Deleted,
    },
}

/// Keys to delete in one task: for paths that are gone (settled when all
/// their keys are), and sweeps beside another path's own transfer (a file
/// that replaced a directory, or the reverse; redone when one fails).
#[derive(Default)]
pub struct Batch {
    pub keys: Vec<(String, u64)>,
    has: BTreeSet<String>,
    removes: Vec<(String, Vec<String>)>,
    sweeps: Vec<(String, Vec<String>)>,
}

impl Batch {
    fn add(&mut self, keys: Vec<(String, u64)>) -> Vec<String> {
        let mut mine = Vec::with_capacity(keys.len());
        for (k, size) in keys {
            mine.push(k.clone());
            if self.has.insert(k.clone()) {
                self.keys.push((k, size));
            }
        }
        mine
    }

    /// The deletions that make the gone path `rel` mirrored.
    pub fn remove(&mut self, rel: &str, keys: Vec<(String, u64)>) {
        let mine = self.add(keys);
        self.removes.push((rel.to_string(), mine));
    }

    /// Deletions beside `rel`'s own transfer.
    pub fn sweep(&mut self, rel: &str, keys: Vec<(String, u64)>) {
        let mine = self.add(keys);
        self.sweeps.push((rel.to_string(), mine));
    }

    /// Does the batch delete `key`?
    pub fn has(&self, key: &str) -> bool {
        self.has.contains(key)
    }

    /// The gone paths it is for (in flight while it runs).
    pub fn settles(&self) -> Vec<String> {
        self.removes.iter().map(|(rel, _)| rel.clone()).collect()
    }

    /// Every path it is for, gone or swept.
    pub fn rels(&self) -> Vec<String> {
        self.removes
            .iter()
            .chain(&self.sweeps)
            .map(|(rel, _)| rel.clone())
            .collect()
    }
}

impl Daemon<'_> {
    pub(super) fn finish_joined(
        &mut self,
        done: Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
    ) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let rels = match self.tasks.info.remove(&id) {
            Some((rels, claim)) => {
                self.tasks.claims.release(&claim);
                self.unblock(&claim);
                rels
            }
            None => Vec::new(),
        };
        match done {
            Ok((_, finished)) => self.finish(finished),
            Err(e) => {
                // A task that panicked or was cancelled: its paths are
                // looked at again (or, when stopping, at the next start).
                let now = Instant::now();
                for rel in rels {
                    if !e.is_cancelled() {
                        self.rep
                            .failed(&rel, &format!("transfer task failed: {e}; retrying"));
                    }
                    let wait = self.gate.retry_after(1);
                    if self.inbox.pending.touch(&rel, now, Mark::CHANGED) {
                        self.inbox.new.push(rel.clone());
                    }
                    self.inbox.pending.set_due(&rel, now + wait);
                    self.inbox.pending.land(&rel);
                }
                self.inbox.journal_new();
            }
        }
    }

    /// Paths that waited for a key this claim held may go now: those whose
    /// key is one of its keys, or above or below one.
    fn unblock(&mut self, claim: &Claim) {
        if self.blocked.is_empty() {
            return;
        }
        let now = Instant::now();
        let released: Vec<&String> = claim.writes.iter().chain(&claim.reads).collect();
        let related = |key: &str| {
            released.iter().any(|k| {
                k.as_str() == key
                    || k.strip_prefix(key).is_some_and(|r| r.starts_with('/'))
                    || key
                        .strip_prefix(k.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
        };
        let ready: Vec<String> = self
            .blocked
            .iter()
            .filter(|rel| related(&self.sync.dest.key_for(rel)))
            .cloned()
            .collect();
        for rel in ready {
            self.blocked.remove(&rel);
            self.inbox.pending.set_due(&rel, now);
        }
    }

    fn finish(&mut self, finished: Finished) {
        match finished {
            Finished::File {
                rel,
                key,
                file,
                outcome,
                copy_from,
            } => self.finish_file(rel, key, file, outcome, copy_from),
            Finished::Deleted { batch, done } => self.finish_deletions(batch, done),
        }
    }

    fn finish_file(
        &mut self,
        rel: String,
        key: String,
        file: LocalFile,
        outcome: Outcome,
        copy_from: Option<String>,
    ) {
        let concluded = sync::conclude(
            self.rep,
            &mut self.session.state,
            &key,
            &file,
            outcome,
            false,
            self.sync.transfer.metadata,
        );
        self.session.state.flush();
        let now = Instant::now();
        match concluded {
            Concluded::Mirrored => {
                // On record now (unless the state database has failed:
                // then the key stays known here).
                if self.session.state.broken.is_none() {
                    self.maybe.remove(&key);
                }
                self.gate.open();
                if let Some(notes) = self.inbox.pending.notes_mut(&rel) {
                    notes.attempts = 0;
                }
                if self.inbox.pending.finish(&rel) {
                    self.settled(&rel);
                }
            }
            // Look again: it is a deletion now (or it came back).
            Concluded::Vanished => {
                self.inbox.pending.set_due(&rel, now);
                self.inbox.pending.land(&rel);
            }
            Concluded::Behind => {
                if let Some(notes) = self.inbox.pending.notes_mut(&rel) {
                    let (since, polls) = notes.behind.unwrap_or((now, 0));
                    notes.behind = Some((since, polls + 1));
                    let poll = Duration::from_millis(250 << polls.min(5)).min(PRIMARY_POLL);
                    self.inbox.pending.set_due(&rel, now + poll);
                }
                self.inbox.pending.land(&rel);
            }
            Concluded::Failed { blame, message, .. } => {
                // The copy may be tried again with its source, if it is
                // still one (no event since: an event cleared it).
                if copy_from.is_some()
                    && self
                        .inbox
                        .pending
                        .get(&rel)
                        .is_some_and(|e| e.copy_from().is_none() && !e.changed_in_flight())
                {
                    self.inbox.pending.set_copy_from(&rel, copy_from);
                }
                match blame {
                    Blame::Request => {
                        self.retry_later(&rel, &file.path.display().to_string(), &message)
                    }
                    Blame::Server | Blame::Fatal => {
                        self.server_trouble(&rel, &message);
                        self.inbox.pending.land(&rel);
                    }
                }
            }
        }
    }

    fn finish_deletions(&mut self, batch: Batch, done: Deleted) {
        done.record(self.rep, &mut self.session.state);
        let mut refused = BTreeSet::new();
        for (key, msg) in done.failures() {
            refused.insert(key.to_string());
            // Keys an outage left untried are said by the outage's line.
            if done.refused.iter().any(|(k, _)| k == key) {
                if let Some(m) = self.quiet.pass(&format!("{key}: {msg}")) {
                    self.rep
                        .failed(key, m.trim_start_matches(&format!("{key}: ")));
                }
            }
        }
        for (k, _) in &done.gone {
            self.maybe.remove(k);
        }
        let now = Instant::now();
        // What was not deleted does not count against the cap.
        self.budget.refund(refused.len() as u64, now);
        let outage = done.error.as_ref().filter(|e| e.blame() != Blame::Request);
        if let Some(e) = outage {
            self.server_trouble_message(&e.to_string());
        } else if refused.is_empty() {
            self.gate.open();
        }
        for (rel, keys) in batch.removes {
            let failed = keys.iter().any(|k| refused.contains(k));
            if !failed {
                if self.inbox.pending.finish(&rel) {
                    self.settled(&rel);
                }
            } else if outage.is_some() {
                let due = self.gate.until().unwrap_or(now);
                self.inbox.pending.set_due(&rel, due);
                self.inbox.pending.land(&rel);
            } else {
                self.retry_later(&rel, &rel.clone(), "some objects could not be deleted");
            }
        }
        for (rel, keys) in batch.sweeps {
            if keys.iter().any(|k| refused.contains(k)) {
                // Look at the path again later; the sweep is redone.
                let wait = self.gate.retry_after(1);
                if self.inbox.pending.touch(&rel, now, Mark::COMPLETE) {
                    self.inbox.new.push(rel.clone());
                }
                self.inbox.pending.set_due(&rel, now + wait);
            }
        }
        self.inbox.journal_new();
    }

    /// A path left the pending set: off the journal, the held deletions
    /// and the paths waiting for a key.
    pub(super) fn settled(&mut self, rel: &str) {
        self.inbox.journal.clear(rel);
        self.budget.release(rel);
        self.blocked.remove(rel);
    }

    /// The server failed a request: everything waits, the path included.
    fn server_trouble(&mut self, rel: &str, message: &str) {
        let wait = self.server_trouble_message(message);
        if let Some(e) = self.inbox.pending.get(rel) {
            let due = e.due().max(Instant::now() + wait);
            self.inbox.pending.set_due(rel, due);
        }
    }

    /// Closes the gate and says so (now and then); returns the wait.
    fn server_trouble_message(&mut self, message: &str) -> Duration {
        let wait = self.gate.close();
        let waiting = self.inbox.pending.len();
        if let Some(m) = self.quiet.pass(message) {
            self.rep.failed(
                &self.sync.dest.to_string(),
                &format!(
                    "{m}; {waiting} changes are waiting (journaled), retrying in {}",
                    super::reconcile::wait_text(wait)
                ),
            );
        }
        wait
    }
}
