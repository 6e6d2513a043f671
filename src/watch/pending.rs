//! The pending set: every path that changed and is not yet known to be
//! mirrored, with when to look at it next.
//!
//! Invariant, kept by this type alone: each pending path is either in
//! flight (a task is acting on it; [`Entry::in_flight`]) or in the queue
//! exactly once, at its due time. A path is due `debounce` after its last
//! event, at once when the event says the file is complete (closed after
//! writing, or renamed into place), and never later than `max_delay` after
//! the first change that no transfer has covered yet, so a file that never
//! goes quiet is still sent that often.
//!
//! Renames: an entry may name the path its file was renamed from
//! (`copy_from`); that path is pinned (counted in `pins`, in step with the
//! entries) until the copy has been started or given up, so the object it
//! would be copied from is not deleted first. A rename of a path that was
//! itself a rename still to be mirrored copies from the first source.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// What an event says of its path, besides that it changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// The file is whole (closed after writing, or renamed into place).
    pub complete: bool,
    /// The path was created or moved in: whatever is there now is new at
    /// this name, whatever the records say of its size and mtime.
    pub appeared: bool,
}

impl Mark {
    pub const CHANGED: Mark = Mark {
        complete: false,
        appeared: false,
    };
    pub const COMPLETE: Mark = Mark {
        complete: true,
        appeared: false,
    };
    pub const CREATED: Mark = Mark {
        complete: false,
        appeared: true,
    };
    pub const MOVED_IN: Mark = Mark {
        complete: true,
        appeared: true,
    };
}

/// How long paths wait.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Quiet time after the last event of a path still being written.
    pub debounce: Duration,
    /// Longest wait since the first change no transfer has covered.
    pub max_delay: Duration,
}

/// One pending path.
#[derive(Debug)]
pub struct Entry {
    due: Instant,
    /// The first change not yet covered by a transfer that started.
    waiting_since: Option<Instant>,
    /// The last event.
    last: Instant,
    /// The last event said the file is complete.
    complete: bool,
    /// An event said the path was created or moved in, since it became
    /// pending.
    appeared: bool,
    copy_from: Option<String>,
    /// When the task acting on it started.
    started: Option<Instant>,
    /// Free of the invariant: the bookkeeping of earlier attempts.
    pub notes: Notes,
}

/// How a path's earlier attempts went.
#[derive(Debug, Default)]
pub struct Notes {
    /// Failed attempts in a row (for the backoff).
    pub attempts: u32,
    /// Since when, and how often, a destination that copies from the
    /// primary found the primary not holding this file yet.
    pub behind: Option<(Instant, u32)>,
    /// When a directory that appeared was first walked (it is walked
    /// again a quiet window later, for files made before its watch was,
    /// or named by events under its old name).
    pub walked: Option<Instant>,
}

impl Entry {
    pub fn due(&self) -> Instant {
        self.due
    }
    pub fn last(&self) -> Instant {
        self.last
    }
    pub fn complete(&self) -> bool {
        self.complete
    }
    pub fn appeared(&self) -> bool {
        self.appeared
    }
    pub fn in_flight(&self) -> bool {
        self.started.is_some()
    }
    /// An event came while a task acted on it.
    pub fn changed_in_flight(&self) -> bool {
        self.started.is_some_and(|s| self.last >= s)
    }
    pub fn copy_from(&self) -> Option<&str> {
        self.copy_from.as_deref()
    }
    /// The latest a still-changing path may wait: `max_delay` after the
    /// first change no transfer covered.
    pub fn deadline(&self, timing: Timing) -> Option<Instant> {
        self.waiting_since.map(|t| t + timing.max_delay)
    }
}

#[derive(Debug)]
pub struct Pending {
    timing: Timing,
    entries: BTreeMap<String, Entry>,
    queue: BTreeSet<(Instant, String)>,
    pins: BTreeMap<String, usize>,
}

impl Pending {
    pub fn new(timing: Timing) -> Pending {
        Pending {
            timing,
            entries: BTreeMap::new(),
            queue: BTreeSet::new(),
            pins: BTreeMap::new(),
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, rel: &str) -> Option<&Entry> {
        self.entries.get(rel)
    }

    pub fn notes_mut(&mut self, rel: &str) -> Option<&mut Notes> {
        self.entries.get_mut(rel).map(|e| &mut e.notes)
    }

    pub fn rels(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// When the first queued path is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// An event for `rel` at `at`. Returns true when the path was not
    /// pending before (it must be journaled). Whatever the path was to be
    /// copied from no longer vouches for what is there now.
    pub fn touch(&mut self, rel: &str, at: Instant, mark: Mark) -> bool {
        let quiet = if mark.complete {
            at
        } else {
            at + self.timing.debounce
        };
        match self.entries.get_mut(rel) {
            Some(e) => {
                e.last = e.last.max(at);
                e.complete = mark.complete;
                e.appeared |= mark.appeared;
                // Changed again: the primary sends the new version, wait
                // for it afresh.
                e.notes.behind = None;
                let since = *e.waiting_since.get_or_insert(at);
                let due = quiet.min(since + self.timing.max_delay);
                let old = e.copy_from.take();
                self.unpin(old);
                self.set_due(rel, due);
                false
            }
            None => {
                self.entries.insert(
                    rel.to_string(),
                    Entry {
                        due: quiet,
                        waiting_since: Some(at),
                        last: at,
                        complete: mark.complete,
                        appeared: mark.appeared,
                        copy_from: None,
                        started: None,
                        notes: Notes::default(),
                    },
                );
                self.queue.insert((quiet, rel.to_string()));
                true
            }
        }
    }

    /// A rename seen whole: `to` is complete and may be copied from the
    /// object of `from` (or of what `from` was itself renamed from);
    /// `from` is gone. Returns the paths that became pending.
    pub fn renamed(&mut self, from: &str, to: &str, at: Instant) -> Vec<String> {
        // The copy still to come moves on with the file.
        let source = match self.entries.get(from) {
            Some(e) if !e.in_flight() && e.copy_from.is_some() => self.take_copy_from(from),
            _ => Some(from.to_string()),
        };
        let mut new = Vec::new();
        if self.touch(to, at, Mark::MOVED_IN) {
            new.push(to.to_string());
        }
        self.set_copy_from(to, source.filter(|s| s != to));
        if self.touch(from, at, Mark::CHANGED) {
            new.push(from.to_string());
        }
        new
    }

    /// Sets (or clears) where a pending path may be copied from.
    pub fn set_copy_from(&mut self, rel: &str, from: Option<String>) {
        let Some(e) = self.entries.get_mut(rel) else {
            return;
        };
        let old = std::mem::replace(&mut e.copy_from, from.clone());
        if let Some(f) = from {
            *self.pins.entry(f).or_default() += 1;
        }
        self.unpin(old);
    }

    /// Takes the copy source off a path that is being acted on.
    pub fn take_copy_from(&mut self, rel: &str) -> Option<String> {
        let old = self.entries.get_mut(rel)?.copy_from.take();
        self.unpin(old.clone());
        old
    }

    fn unpin(&mut self, rel: Option<String>) {
        let Some(rel) = rel else { return };
        if let Some(n) = self.pins.get_mut(&rel) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&rel);
            }
        }
    }

    /// Is a copy from `rel`, or from a path under it, still to come?
    pub fn pinned(&self, rel: &str) -> bool {
        let under = format!("{rel}/");
        self.pins.contains_key(rel)
            || self
                .pins
                .range(under.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&under))
    }

    /// Moves when a pending path is next looked at (a path in flight is
    /// queued at that time when it lands).
    pub fn set_due(&mut self, rel: &str, due: Instant) {
        let Some(e) = self.entries.get_mut(rel) else {
            return;
        };
        let old = std::mem::replace(&mut e.due, due);
        if e.started.is_none() {
            self.queue.remove(&(old, rel.to_string()));
            self.queue.insert((due, rel.to_string()));
        }
    }

    /// The next path due at `now`, taken off the queue and in flight from
    /// now.
    pub fn pop_due(&mut self, now: Instant) -> Option<String> {
        let (due, _) = self.queue.first()?;
        if *due > now {
            return None;
        }
        let (_, rel) = self.queue.pop_first()?;
        if let Some(e) = self.entries.get_mut(&rel) {
            e.started = Some(now);
        }
        Some(rel)
    }

    /// A transfer of the path as it is now has started: the changes so far
    /// are covered, the longest delay counts from the next one.
    pub fn covered(&mut self, rel: &str) {
        if let Some(e) = self.entries.get_mut(rel) {
            e.waiting_since = None;
        }
    }

    /// The work on an in-flight path ended without mirroring it: it is
    /// queued again at its due time.
    pub fn land(&mut self, rel: &str) {
        if let Some(e) = self.entries.get_mut(rel) {
            if e.started.take().is_some() {
                // A change since the start: the next look waits for quiet
                // again (at least the due time set by that change).
                self.queue.insert((e.due, rel.to_string()));
            }
        }
    }

    /// The work on an in-flight path mirrored it as it was when the work
    /// started. It stays pending when it changed since (returns false).
    pub fn finish(&mut self, rel: &str) -> bool {
        let Some(e) = self.entries.get(rel) else {
            return true;
        };
        match e.started {
            Some(started) if e.last >= started => {
                self.land(rel);
                false
            }
            _ => {
                self.settle(rel);
                true
            }
        }
    }

    /// Done with a path, whatever its state: off the set.
    pub fn settle(&mut self, rel: &str) {
        if let Some(e) = self.entries.remove(rel) {
            if e.started.is_none() {
                self.queue.remove(&(e.due, rel.to_string()));
            }
            self.unpin(e.copy_from);
        }
    }

    /// Checks the invariant (tests).
    #[cfg(test)]
    pub fn check(&self) {
        let mut queued = 0;
        let mut pins: BTreeMap<String, usize> = BTreeMap::new();
        for (rel, e) in &self.entries {
            if e.started.is_none() {
                assert!(
                    self.queue.contains(&(e.due, rel.clone())),
                    "{rel} is pending, not in flight, and not queued at its due time"
                );
                queued += 1;
            }
            if let Some(f) = &e.copy_from {
                *pins.entry(f.clone()).or_default() += 1;
            }
        }
        assert_eq!(
            queued,
            self.queue.len(),
            "the queue holds paths twice or stale ones"
        );
        assert_eq!(pins, self.pins, "pins out of step with the entries");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn set() -> (Pending, Instant) {
        let timing = Timing {
            debounce: 200 * MS,
            max_delay: 1000 * MS,
        };
        (Pending::new(timing), Instant::now())
    }

    #[test]
    fn a_path_is_due_after_its_quiet_window_or_at_once_when_complete() {
        let (mut p, t) = set();
        assert!(p.touch("a", t, Mark::CHANGED));
        assert!(!p.touch("a", t + 50 * MS, Mark::CHANGED), "already pending");
        assert!(p.touch("b", t, Mark::COMPLETE));
        p.check();
        assert_eq!(p.pop_due(t).as_deref(), Some("b"));
        assert_eq!(p.pop_due(t + 249 * MS), None);
        assert_eq!(p.pop_due(t + 250 * MS).as_deref(), Some("a"));
        p.check();
    }

    #[test]
    fn a_path_that_never_goes_quiet_is_due_by_the_max_delay() {
        let (mut p, t) = set();
        for i in 0..100 {
            p.touch("log", t + i * 20 * MS, Mark::CHANGED);
        }
        p.check();
        assert_eq!(p.get("log").map(Entry::due), Some(t + 1000 * MS));
        assert_eq!(p.pop_due(t + 1000 * MS).as_deref(), Some("log"));
        p.covered("log");
        // Changes during the upload count from the upload's start.
        p.touch("log", t + 1100 * MS, Mark::CHANGED);
        p.land("log");
        p.check();
        assert_eq!(p.get("log").map(Entry::due), Some(t + 1300 * MS));
    }

    #[test]
    fn a_change_during_the_transfer_keeps_the_path_pending() {
        let (mut p, t) = set();
        p.touch("a", t, Mark::COMPLETE);
        assert_eq!(p.pop_due(t).as_deref(), Some("a"));
        assert!(p.get("a").is_some_and(Entry::in_flight));
        p.touch("a", t + 10 * MS, Mark::CHANGED);
        p.check();
        assert_eq!(p.pop_due(t + 1000 * MS), None, "in flight: not queued");
        assert!(!p.finish("a"), "changed since it started");
        p.check();
        assert_eq!(p.pop_due(t + 210 * MS).as_deref(), Some("a"));
        assert!(p.finish("a"));
        assert_eq!(p.len(), 0);
        p.check();
    }

    #[test]
    fn renames_pin_their_source_and_chains_copy_from_the_first() {
        let (mut p, t) = set();
        p.renamed("a", "b", t);
        p.renamed("b", "c", t + MS);
        p.check();
        assert_eq!(p.get("c").and_then(Entry::copy_from), Some("a"));
        assert!(p.pinned("a"));
        // A directory holding a pinned path is pinned too.
        p.renamed("d/x", "e/x", t);
        assert!(p.pinned("d") && !p.pinned("d0"));
        // b, renamed on, is gone (due after its quiet window); c and e/x,
        // renamed into place, are due at once.
        assert_eq!(p.pop_due(t + MS).as_deref(), Some("e/x"));
        assert_eq!(p.pop_due(t + MS).as_deref(), Some("c"));
        assert_eq!(p.pop_due(t + MS), None);
        assert_eq!(p.take_copy_from("c").as_deref(), Some("a"));
        p.check();
        assert!(
            !p.pinned("a"),
            "taken: the copy itself protects its source now"
        );
        // Renamed back onto itself: no copy.
        p.renamed("m", "n", t);
        p.renamed("n", "m", t);
        assert_eq!(p.get("m").and_then(Entry::copy_from), None);
        p.check();
        // Written to after the rename: the old object no longer vouches
        // for it.
        p.renamed("x", "y", t);
        assert!(p.pinned("x"));
        p.touch("y", t + MS, Mark::CHANGED);
        assert_eq!(p.get("y").and_then(Entry::copy_from), None);
        assert!(!p.pinned("x"));
        assert!(p.get("y").is_some_and(Entry::appeared), "it did appear");
        p.check();
    }

    /// Random operations in any order never break the invariant.
    #[test]
    fn random_operations_keep_the_invariant() {
        let (mut p, t) = set();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let names = ["a", "b", "c", "d/x", "d/y", "e"];
        for step in 0..20_000u64 {
            let now = t + Duration::from_millis(step);
            let rel = names[next(names.len() as u64) as usize];
            let other = names[next(names.len() as u64) as usize];
            match next(9) {
                0 | 1 => {
                    let mark = Mark {
                        complete: next(2) == 0,
                        appeared: next(2) == 0,
                    };
                    p.touch(rel, now, mark);
                }
                2 => {
                    p.renamed(other, rel, now);
                }
                3 => {
                    if let Some(rel) = p.pop_due(now + Duration::from_millis(next(400))) {
                        if next(2) == 0 {
                            p.covered(&rel);
                        }
                    }
                }
                4 => p.land(rel),
                5 => {
                    p.finish(rel);
                }
                6 => p.settle(rel),
                7 => p.set_due(rel, now + Duration::from_millis(next(500))),
                _ => {
                    p.take_copy_from(rel);
                }
            }
            p.check();
        }
    }
}
