//! Intake's side of the daemon: changes become pending paths, journaled.
//!
//! The inbox owns what intake needs and nothing a reconcile uses (it has
//! its own copy of the filters), so it keeps taking and journaling events
//! while a reconcile holds the state database. What it cannot decide on
//! its own (a rescan, a look at the root, recompiling the exclusions) it
//! raises as a flag for the daemon.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::gate::Quiet;
use super::intake::{self, Change, Inbound};
use super::journal::Journal;
use super::pending::{Mark, Pending};
use crate::keys;
use crate::report::Reporter;
use crate::scan::{self, Filter};

/// How long a path moved in waits for the event that names where it came
/// from (notify sends it right after).
const PAIRING: std::time::Duration = std::time::Duration::from_millis(10);

pub struct Inbox {
    dir: PathBuf,
    prefix: String,
    pub filter: Filter,
    pub pending: Pending,
    pub journal: Journal,
    /// Newly pending paths, not yet journaled.
    pub new: Vec<String>,
    /// A full reconcile is needed (events were lost).
    pub rescan: Option<&'static str>,
    /// An event was about the root itself.
    pub root_event: bool,
    /// The ignore file changed.
    pub ignore_changed: bool,
    /// The watch limit was hit while new directories were watched.
    pub limit_hit: bool,
    quiet: Quiet,
}

impl Inbox {
    pub fn new(
        dir: PathBuf,
        prefix: String,
        filter: Filter,
        pending: Pending,
        journal: Journal,
    ) -> Inbox {
        Inbox {
            dir,
            prefix,
            filter,
            pending,
            journal,
            new: Vec::new(),
            rescan: None,
            root_event: false,
            ignore_changed: false,
            limit_hit: false,
            quiet: Quiet::default(),
        }
    }

    /// The paths a crash or a stop left in the journal: pending at once
    /// (the first reconcile hashes them).
    pub fn resume(&mut self, rels: &[String]) {
        let now = Instant::now();
        for rel in rels {
            self.pending.touch(rel, now, Mark::COMPLETE);
        }
        // Journaled already (those of the old table are journaled anew).
        self.journal.mark(rels.iter().map(String::as_str));
    }

    /// Writes the newly pending paths to the journal, in one commit.
    pub fn journal_new(&mut self) {
        if !self.new.is_empty() {
            let new = std::mem::take(&mut self.new);
            self.journal.mark(new.iter().map(String::as_str));
        }
    }

    pub fn take(&mut self, rep: &Reporter, input: Inbound) {
        match input {
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => self.limit_hit = true,
            Err(e) => {
                if let Some(m) = self.quiet.pass(&format!("watching: {e}")) {
                    rep.warn(&m);
                }
            }
            Ok(ev) => {
                if rep.debugging() {
                    rep.debug(&format!("event {:?} {:?}", ev.kind, ev.paths));
                }
                for change in intake::classify(&ev) {
                    self.change(rep, change);
                }
            }
        }
    }

    fn change(&mut self, rep: &Reporter, change: Change) {
        let now = Instant::now();
        match change {
            Change::Rescan => {
                self.rescan
                    .get_or_insert("the kernel's event queue overflowed");
            }
            Change::Touched { path, mark } => {
                if self.about_root(&path) {
                    return;
                }
                if let Some(rel) = self.rel_of(rep, &path) {
                    if self.pending.touch(&rel, now, mark) {
                        self.new.push(rel.clone());
                    }
                    // The half of a rename that says where it went comes
                    // just before the whole (with where it came from, for a
                    // copy): a moment to let it come.
                    if mark == Mark::MOVED_IN {
                        self.pending.set_due(&rel, now + PAIRING);
                    }
                }
            }
            Change::Renamed { from, to } => {
                if self.about_root(&from) | self.about_root(&to) {
                    return;
                }
                let (from, to) = (self.rel_of(rep, &from), self.rel_of(rep, &to));
                let new = match (from, to) {
                    (Some(from), Some(to)) => self.pending.renamed(&from, &to, now),
                    // Moved in from an excluded name: a new file, whole.
                    (None, Some(to)) => self
                        .pending
                        .touch(&to, now, Mark::MOVED_IN)
                        .then_some(to)
                        .into_iter()
                        .collect(),
                    // Moved out to an excluded name: gone.
                    (Some(from), None) => self
                        .pending
                        .touch(&from, now, Mark::CHANGED)
                        .then_some(from)
                        .into_iter()
                        .collect(),
                    (None, None) => Vec::new(),
                };
                self.new.extend(new);
            }
        }
    }

    /// Is this event about the root itself (or a sibling seen through the
    /// watch on the root's parent, which only the root matters of)? Raises
    /// the flags it calls for.
    fn about_root(&mut self, path: &Path) -> bool {
        if path == self.dir {
            self.root_event = true;
            return true;
        }
        if path == self.dir.join(scan::IGNORE_FILE) {
            self.ignore_changed = true;
        }
        !path.starts_with(&self.dir)
    }

    /// A path relative to the root as a key-safe string; a name that cannot
    /// be a key is reported (now and then) and left out, and so is a path
    /// excluded whether it is a file or a directory (not even journaled).
    fn rel_of(&mut self, rep: &Reporter, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.dir).ok()?;
        if rel.as_os_str().is_empty() {
            return None;
        }
        match keys::rel_key(rel, &self.prefix) {
            Ok(r)
                if self.filter.excludes_path(&r, false) && self.filter.excludes_path(&r, true) =>
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
                    rep.failed(&path.to_string_lossy(), &msg);
                }
                None
            }
        }
    }
}
