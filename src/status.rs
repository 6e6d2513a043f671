//! `s3ma status`: how each destination's mirror is doing, read from its
//! state database without taking the run lock, so it works beside a
//! running `watch` or `sync` (a monitoring check, an `ExecCondition=`).
//!
//! `watch` writes its record every few seconds and `sync` at the end of
//! each run, under the database's `status` meta key.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Target;
use crate::report::{utc, Reporter};
use crate::state::State;

/// The meta key the record is kept under.
const META: &str = "status";

/// A `watch` record older than this, with its process gone or not
/// updating, says the daemon is not running.
const STALE: Duration = Duration::from_secs(60);

/// What a run says about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    /// `watch` or `sync`.
    pub command: String,
    pub pid: u32,
    /// When this record was written (Unix seconds).
    pub updated: u64,
    /// `watch`'s --rescan-interval, in seconds.
    pub rescan_seconds: Option<u64>,
    pub last_reconcile: Option<Reconcile>,
    pub pending: u64,
    pub in_flight: u64,
    pub held: u64,
    pub failing: Vec<Failing>,
    pub last_upload: Option<Upload>,
    /// Directories `watch` watches (one inotify watch each).
    #[serde(default)]
    pub watched_dirs: Option<u64>,
}

/// The last full reconcile that completed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reconcile {
    pub at: u64,
    pub seconds: f64,
    pub why: String,
    pub uploaded: u64,
    pub deleted: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Failing {
    pub path: String,
    pub message: String,
    pub at: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Upload {
    pub key: String,
    pub at: u64,
}

/// Unix seconds of a time.
pub fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn time_of(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl Record {
    /// A record of `command` now, with what `rep` knows of failures and
    /// uploads.
    pub fn now(command: &str, rep: &Reporter) -> Record {
        Record {
            command: command.into(),
            pid: std::process::id(),
            updated: secs(SystemTime::now()),
            failing: rep
                .pulse
                .failing()
                .into_iter()
                .map(|(path, at, message)| Failing {
                    path,
                    message,
                    at: secs(at),
                })
                .collect(),
            last_upload: rep
                .pulse
                .last_upload()
                .map(|(at, key)| Upload { key, at: secs(at) }),
            ..Record::default()
        }
    }

    /// Keeps the record in the database (for `s3ma status`) and in the
    /// reporter's pulse (for metrics).
    pub fn save(&self, state: &mut State, rep: &Reporter) {
        rep.pulse.set_record(self.clone());
        if let Ok(text) = serde_json::to_string(self) {
            state.set_meta(META, &text);
        }
    }
}

/// What `status` found for one destination.
#[derive(Debug)]
pub struct Found {
    pub record: Option<Record>,
    /// A process of the record's pid runs s3ma (and, for `watch`, keeps
    /// its record fresh).
    pub running: bool,
    /// Paths in the watch journal, waiting to be mirrored.
    pub journal: u64,
    /// What needs attention; empty when healthy.
    pub problems: Vec<String>,
}

/// Is `pid` an s3ma process?
fn is_s3ma(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .next()
            .is_some_and(|a| a.ends_with(b"s3ma"))
    })
}

/// Rows in a SQLite table, read only; 0 when the file is not there.
fn count_rows(path: &Path, table: &str) -> Result<u64> {
    if !path.exists() {
        return Ok(0);
    }
    let conn = crate::state::open_read_only(path)?;
    let n: i64 = conn
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(n.max(0) as u64)
}

/// Reads one destination's record and judges it.
pub fn look(t: &Target) -> Result<Found> {
    let db = crate::sync::state_path(&t.sync, &t.conn);
    let record: Option<Record> = if db.exists() {
        let conn = crate::state::open_read_only(&db)?;
        let text: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE name = ?1", [META], |r| {
                r.get(0)
            })
            .ok();
        text.and_then(|t| serde_json::from_str(&t).ok())
    } else {
        None
    };
    let journal = count_rows(&db.with_extension("journal"), "dirty")?;
    let now = SystemTime::now();
    let age = |at: u64| now.duration_since(time_of(at)).unwrap_or_default();
    let alive = record.as_ref().is_some_and(|r| is_s3ma(r.pid));
    let fresh = record
        .as_ref()
        .is_some_and(|r| r.command != "watch" || age(r.updated) < STALE);
    let running = alive && fresh;
    let mut problems = Vec::new();
    match &record {
        None => problems.push(format!(
            "no sync or watch of {} to {} has recorded a status here ({}); run one",
            t.sync.dir.display(),
            t.sync.dest,
            db.display()
        )),
        Some(r) => {
            if r.command == "watch" && alive && !fresh {
                problems.push(format!(
                    "the watch daemon (pid {}) has not written its record for {} s: it may be \
                     stuck (its record is written every 5 s)",
                    r.pid,
                    age(r.updated).as_secs()
                ));
            } else if r.command == "watch" && !running {
                problems.push(format!(
                    "no watch daemon is running (the last one, pid {}, wrote at {})",
                    r.pid,
                    utc(time_of(r.updated))
                ));
            }
            match (&r.last_reconcile, r.rescan_seconds) {
                (None, _) => problems.push("no full reconcile has completed".into()),
                (Some(l), Some(every)) if age(l.at) > Duration::from_secs(2 * every) => problems
                    .push(format!(
                        "the last full reconcile was at {}, more than twice the rescan interval \
                         ({every} s) ago",
                        utc(time_of(l.at))
                    )),
                _ => {}
            }
            if !r.failing.is_empty() {
                problems.push(format!("{} paths are failing", r.failing.len()));
            }
            if r.held > 0 {
                problems.push(format!("{} deletions are held by --max-delete", r.held));
            }
        }
    }
    Ok(Found {
        record,
        running,
        journal,
        problems,
    })
}

/// Prints what was found, as text or one JSON object. A reader that
/// stopped reading (`s3ma status | head -1`) is no error.
pub fn print(t: &Target, f: &Found, json_out: bool) {
    use std::io::Write;
    let r = f.record.clone().unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    if json_out {
        let _ = writeln!(
            stdout,
            "{}",
            json!({
                "dest": t.sync.dest.to_string(), "name": t.name, "dir": t.sync.dir,
                "healthy": f.problems.is_empty(), "problems": f.problems,
                "running": f.running, "pid": f.record.as_ref().map(|r| r.pid),
                "command": f.record.as_ref().map(|r| r.command.clone()),
                "updated": f.record.as_ref().map(|r| utc(time_of(r.updated))),
                "last_reconcile": r.last_reconcile.as_ref().map(|l| json!({
                    "at": utc(time_of(l.at)), "seconds": l.seconds, "why": l.why,
                    "uploaded": l.uploaded, "deleted": l.deleted, "failed": l.failed})),
                "pending": r.pending, "in_flight": r.in_flight, "held": r.held,
                "journal": f.journal,
                "failing": r.failing.iter().map(|x| json!({"path": x.path,
                    "message": x.message, "at": utc(time_of(x.at))})).collect::<Vec<_>>(),
                "last_upload": r.last_upload.as_ref().map(|u| json!({"key": u.key,
                    "at": utc(time_of(u.at))})),
            })
        );
        return;
    }
    let mut out = vec![format!(
        "{} ← {}{}",
        t.sync.dest,
        t.sync.dir.display(),
        t.name
            .as_ref()
            .map(|n| format!(" [{n}]"))
            .unwrap_or_default()
    )];
    if let Some(rec) = &f.record {
        out.push(format!(
            "  {}: {} (pid {}), last written {}",
            rec.command,
            if f.running { "running" } else { "not running" },
            rec.pid,
            utc(time_of(rec.updated))
        ));
    }
    match &r.last_reconcile {
        Some(l) => out.push(format!(
            "  last full reconcile: {} ({}), {:.1} s: uploaded {}, deleted {}, failed {}",
            utc(time_of(l.at)),
            l.why,
            l.seconds,
            l.uploaded,
            l.deleted,
            l.failed
        )),
        None => out.push("  last full reconcile: none".into()),
    }
    out.push(format!(
        "  pending {}, in flight {}, held deletions {}, journal {}",
        r.pending, r.in_flight, r.held, f.journal
    ));
    if let Some(u) = &r.last_upload {
        out.push(format!(
            "  last upload: {} at {}",
            u.key,
            utc(time_of(u.at))
        ));
    }
    for x in &r.failing {
        out.push(format!(
            "  failing since {}: {}: {}",
            utc(time_of(x.at)),
            x.path,
            x.message
        ));
    }
    if f.problems.is_empty() {
        out.push("  healthy".into());
    } else {
        for p in &f.problems {
            out.push(format!("  needs attention: {p}"));
        }
    }
    let _ = writeln!(stdout, "{}", out.join("\n"));
}
