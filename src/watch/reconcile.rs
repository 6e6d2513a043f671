//! Full reconciles inside the daemon: at the start, on SIGHUP, after an
//! event-queue overflow, when the root is back or switched, and every
//! `--rescan-interval`.
//!
//! A reconcile is `sync`'s, run on the daemon's session; intake goes on
//! meanwhile (journaled, acted on after). What it settles, what it leaves
//! to the daemon (failed uploads, deletions it could not do) and how its
//! deletions count against `--max-delete` is decided here.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::pending::Mark;
use super::root::Health;
use super::LastReconcile;
use super::{Daemon, LIMITED_RESCAN, ROOT_META};
use crate::report::get;
use crate::sync::{self, Refused, Status};

impl Daemon<'_> {
    /// A full reconcile. In-flight work is finished first (it shares the
    /// state database); intake goes on meanwhile, so events are journaled
    /// while the reconcile runs. Pending paths whose last change is older
    /// than the reconcile are settled by it when it succeeds.
    pub(super) async fn reconcile(&mut self, why: &str) -> Result<()> {
        self.rep.debug(&format!("reconcile ({why})"));
        let stop = self.stop;
        while !self.tasks.is_empty() {
            tokio::select! {
                Some(done) = self.tasks.set.join_next_with_id() => self.finish_joined(done),
                Some(input) = self.rx.recv() => self.take_inputs(input),
                // Stopping: the shutdown lets them finish, for a while.
                _ = stop.wait() => return Ok(()),
            }
        }
        if self.check_root() == Health::Gone {
            return Ok(());
        }
        let started = Instant::now();
        let watched = self.root.watched_meta();
        let recheck = if self.recheck_all {
            sync::Recheck::All
        } else {
            sync::Recheck::These(self.inbox.pending.rels().map(|(r, _)| r.clone()).collect())
        };
        let before = (
            get(&self.rep.counts.uploaded),
            get(&self.rep.counts.deleted),
            get(&self.rep.counts.failed),
        );
        // Deletions done meanwhile count against the daemon's cap.
        let mut cfg = self.sync.clone();
        cfg.max_delete = self.budget.remaining(started);
        let status = {
            let Daemon {
                session,
                rep,
                stop,
                rx,
                inbox,
                ..
            } = self;
            let work = sync::reconcile(session, &cfg, rep, stop, &recheck);
            tokio::pin!(work);
            // The daemon's task is polled all along (a long upload is no
            // stuck loop): the watchdog hears it.
            let mut beat = tokio::time::interval(super::BEAT);
            loop {
                tokio::select! {
                    status = &mut work => break status,
                    Some(input) = rx.recv() => {
                        inbox.take(rep, input);
                        inbox.journal_new();
                    }
                    _ = beat.tick() => rep.pulse.beat(),
                }
            }
        };
        let uploaded = get(&self.rep.counts.uploaded) - before.0;
        let deleted = get(&self.rep.counts.deleted) - before.1;
        self.budget.spend(deleted, Instant::now());
        let status = status?;
        if matches!(status, Status::Done | Status::Partial) {
            // The new tree was hashed: no need to again; and the next
            // start knows which directory was last reconciled.
            self.recheck_all = false;
            if let Some(id) = watched {
                self.session.state.set_meta(ROOT_META, &id);
            }
        }
        let unconfirmed = std::mem::take(&mut self.session.unconfirmed);
        match status {
            Status::Done => {
                let settled: Vec<String> = self
                    .inbox
                    .pending
                    .rels()
                    .filter(|(rel, e)| {
                        e.last() < started && !e.in_flight() && !self.inbox.pending.pinned(rel)
                    })
                    .map(|(rel, _)| rel.clone())
                    .collect();
                for rel in settled {
                    self.settle(&rel);
                }
                self.inbox.journal.commit();
                // The reconcile saw the bucket: nothing unknown is left
                // but what it tried and could not record.
                self.maybe.clear();
                self.gate.open();
            }
            Status::Partial => {
                let now = Instant::now();
                for rel in std::mem::take(&mut self.session.failed_rels) {
                    if self.inbox.pending.touch(&rel, now, Mark::COMPLETE) {
                        self.inbox.new.push(rel.clone());
                    }
                    let wait = self.gate.retry_after(1);
                    self.inbox.pending.set_due(&rel, now + wait);
                }
            }
            Status::Interrupted | Status::Busy(_) => {}
        }
        // What it wrote without a record, and what it listed but did not
        // delete (for failed uploads' sake, or refused): known objects to
        // the daemon, whose gone paths it deletes with its own guards.
        self.maybe.extend(unconfirmed.into_iter().map(|k| (k, 0)));
        let now = Instant::now();
        for key in std::mem::take(&mut self.session.deletes_left) {
            if let Some(rel) = self.sync.dest.rel_of(&key) {
                if self.inbox.pending.touch(rel, now, Mark::CHANGED) {
                    self.inbox.new.push(rel.to_string());
                }
            }
            self.maybe.entry(key).or_insert(0);
        }
        self.inbox.journal_new();
        self.last_reconcile = Some(LastReconcile {
            at: std::time::SystemTime::now(),
            why: why.to_string(),
            seconds: started.elapsed().as_secs_f64(),
            uploaded,
            deleted,
            failed: get(&self.rep.counts.failed) - before.2,
        });
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

    pub(super) fn reconcile_failed(&mut self, e: &anyhow::Error) {
        if let Some(refused) = e.chain().find_map(|c| c.downcast_ref::<Refused>()) {
            if let Refused::MaxDelete { count, .. } = refused {
                // The reconcile found more deletions than the cap leaves:
                // held, like the daemon's own.
                self.budget.trip();
                self.held_by_reconcile = *count as u64;
                self.say_held();
            } else if let Some(m) = self.quiet.pass(&format!("{e:#}")) {
                self.rep.failed(&self.sync.dir.display().to_string(), &m);
            }
            // A guard refused the deletions; look again later.
            self.next_rescan = Some((Instant::now() + LIMITED_RESCAN, "refused deletions"));
            return;
        }
        let wait = self.gate.close();
        let msg = format!("reconcile failed: {e:#}");
        if let Some(m) = self.quiet.pass(&msg) {
            self.rep.failed(
                &self.sync.dest.to_string(),
                &format!("{m}; retrying in {}", wait_text(wait)),
            );
        }
        self.rescan = None;
        self.next_rescan = Some((Instant::now() + wait, "retry"));
    }

    /// Says how many deletions are held and how to let them through, in
    /// one line once their number has settled (nothing in flight, nothing
    /// due at once), and again when it changes.
    pub(super) fn say_held(&mut self) {
        let held = self.held();
        if held == self.held_said {
            return;
        }
        let soon = Instant::now() + Duration::from_millis(500);
        if !self.tasks.is_empty() || self.inbox.pending.next_due().is_some_and(|d| d < soon) {
            return;
        }
        let max = self.budget.max().unwrap_or(0);
        let msg = format!(
            "holding {held} deletions under {}: more than --max-delete {max} within {}. Nothing \
             more is deleted until s3ma watch restarts; the paths stay in its journal. To let \
             them through, restart it with a higher --max-delete (or stop it and run `s3ma sync \
             {} {} --delete --max-delete N`); to cancel them, put the files back",
            self.sync.dest,
            crate::report::human_duration(self.budget.window()),
            self.sync.dir.display(),
            self.sync.dest,
        );
        self.held_said = held;
        self.rep.held_back(
            "held",
            &msg,
            json!({"held": held, "max_delete": max,
                   "window_seconds": self.budget.window().as_secs()}),
        );
    }
}

/// A wait as said in a message: `0.3 s`, `12 s`, `2 min`.
pub(super) fn wait_text(wait: Duration) -> String {
    let secs = wait.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else if secs < 120.0 {
        format!("{secs:.0} s")
    } else {
        format!("{:.0} min", secs / 60.0)
    }
}
