//! Everything s3ma prints: action lines and the summary on stdout, notes,
//! warnings and errors on stderr, JSON lines with `--json`, and a progress
//! line on stderr only when stderr is a terminal.
//!
//! The reporter is shared by the coordinator and the workers; it is cheap to
//! call and never blocks on anything but the terminal.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::pulse::Pulse;

/// How much to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Errors only (`-q`).
    Quiet,
    Normal,
    /// `-v`: decisions and skips.
    Verbose,
    /// `-vv`: also each request.
    Debug,
}

/// Counters for the summary line.
#[derive(Debug, Default)]
pub struct Counters {
    pub scanned: AtomicU64,
    pub uploaded: AtomicU64,
    pub downloaded: AtomicU64,
    pub deleted: AtomicU64,
    pub copied: AtomicU64,
    pub skipped: AtomicU64,
    pub failed: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct Reporter {
    level: Level,
    json: bool,
    progress: bool,
    last_progress: Mutex<Instant>,
    pub counts: Counters,
    started: Mutex<Instant>,
    /// The destination this reporter speaks for, when not the primary:
    /// text lines start with `[label] `, JSON lines carry `"dest"`.
    label: Option<String>,
    /// The daemon's signs of life, for systemd and `s3ma status`.
    pub pulse: Pulse,
    /// Text lines start with the time (not under journald, which adds its
    /// own).
    timestamps: bool,
    /// Lines written to stdout so far.
    printed: AtomicU64,
}

/// Whether text lines carry the time, for lines written outside a
/// reporter (the request log).
static STAMPS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes one line to stderr in one write, so that it is never broken up
/// by another writer of the same stream (stdout sent to the same file,
/// the journal).
pub fn say(line: &str) {
    use std::io::Write as _;
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The time and a space when lines carry the time, else nothing.
pub fn stamp() -> String {
    if STAMPS.load(Ordering::Relaxed) {
        format!("{} ", utc(std::time::SystemTime::now()))
    } else {
        String::new()
    }
}

/// A counter's value now.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A name as one line of text: control characters (a newline in a file
/// name, say) are shown escaped (`\n`), everything else as it is.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// `90 s` → `1m30s`, `3600 s` → `1h`.
pub fn human_duration(d: Duration) -> String {
    let mut left = d.as_secs();
    let mut out = String::new();
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if left >= secs {
            out.push_str(&format!("{}{unit}", left / secs));
            left %= secs;
        }
    }
    if left > 0 || out.is_empty() {
        out.push_str(&format!("{left}s"));
    }
    out
}

/// A time as ISO 8601 in UTC, to the second: `2026-12-01T10:41:49Z`.
pub fn utc(t: std::time::SystemTime) -> String {
    utc_secs(
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    )
}

/// Seconds since 1970 as [`utc`] writes them; `-` when out of range.
pub fn utc_secs(secs: i64) -> String {
    use aws_smithy_types::date_time::{DateTime, Format};
    DateTime::from_secs(secs)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| "-".into())
}

/// `1536` → `1.5 KiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Reporter {
    /// `progress`: draw a progress line when stderr is a terminal.
    pub fn new(level: Level, json: bool, progress: bool) -> Reporter {
        Reporter {
            level,
            json,
            progress: progress
                && !json
                && level >= Level::Normal
                && std::io::stderr().is_terminal(),
            last_progress: Mutex::new(Instant::now()),
            counts: Counters::default(),
            started: Mutex::new(Instant::now()),
            label: None,
            pulse: Pulse::started(),
            timestamps: false,
            printed: AtomicU64::new(0),
        }
    }

    /// A reporter for another destination: same settings, its own
    /// counters, no progress line (several destinations run at once).
    pub fn for_destination(&self, label: &str) -> Reporter {
        Reporter {
            level: self.level,
            json: self.json,
            progress: false,
            last_progress: Mutex::new(Instant::now()),
            counts: Counters::default(),
            started: Mutex::new(Instant::now()),
            label: Some(label.to_string()),
            pulse: Pulse::started(),
            timestamps: self.timestamps,
            printed: AtomicU64::new(0),
        }
    }

    fn json_line(&self, mut v: serde_json::Value) {
        if let Some(label) = &self.label {
            v["dest"] = json!(label);
        }
        self.out(&v.to_string());
    }

    fn clear_progress(&self) {
        if self.progress {
            eprint!("\r\x1b[K");
        }
    }

    /// With timestamps on: the time and a space.
    fn stamp(&self) -> String {
        if self.timestamps {
            stamp()
        } else {
            String::new()
        }
    }

    /// Lines written to stdout so far (a daemon says it is idle after
    /// the last of them).
    pub fn printed(&self) -> u64 {
        self.printed.load(Ordering::Relaxed)
    }

    fn out(&self, line: &str) {
        add(&self.printed, 1);
        self.clear_progress();
        let mut o = std::io::stdout().lock();
        let _ = match (&self.label, self.json) {
            (Some(label), false) => writeln!(o, "{}[{label}] {line}", self.stamp()),
            (None, false) => writeln!(o, "{}{line}", self.stamp()),
            (_, true) => writeln!(o, "{line}"),
        };
    }

    fn err(&self, line: &str) {
        self.clear_progress();
        match &self.label {
            Some(label) => say(&format!("{}[{label}] {line}", self.stamp())),
            None => say(&format!("{}{line}", self.stamp())),
        }
    }

    /// Text lines start with the time from now on (the request lines of
    /// `-vv` too).
    pub fn with_timestamps(mut self, on: bool) -> Reporter {
        self.timestamps = on;
        STAMPS.store(on, Ordering::Relaxed);
        self
    }

    /// A local file deleted by `restore --delete`.
    pub fn deleted_file(&self, path: &str, dry_run: bool) {
        add(&self.counts.deleted, 1);
        if self.level == Level::Quiet {
            return;
        }
        if self.json {
            self.json_line(json!({"action": "delete", "path": path, "dry_run": dry_run}));
        } else if dry_run {
            self.out(&format!("would delete {}", printable(path)));
        } else {
            self.out(&format!("delete {}", printable(path)));
        }
    }

    /// The last line of a restore.
    pub fn summary_restore(&self, dry_run: bool) {
        let c = &self.counts;
        let started = *self.started.lock().unwrap_or_else(|e| e.into_inner());
        let secs = started.elapsed().as_secs_f64();
        if self.json {
            self.json_line(
                json!({"action": "summary", "downloaded": get(&c.downloaded),
                "deleted": get(&c.deleted), "skipped": get(&c.skipped), "failed": get(&c.failed),
                "bytes": get(&c.bytes), "seconds": (secs * 1000.0).round() / 1000.0,
                "dry_run": dry_run}),
            );
            return;
        }
        self.clear_progress();
        if self.level == Level::Quiet {
            return;
        }
        let (verb, del) = if dry_run {
            ("would download", "would delete")
        } else {
            ("downloaded", "deleted")
        };
        self.out(&format!(
            "{verb} {} ({}), {del} {}, skipped {}, failed {} in {secs:.2} s",
            get(&c.downloaded),
            human_size(get(&c.bytes)),
            get(&c.deleted),
            get(&c.skipped),
            get(&c.failed),
        ));
    }

    /// An upload (or, with `dry_run`, one that would happen).
    pub fn uploaded(
        &self,
        key: &str,
        path: &str,
        size: u64,
        elapsed: Duration,
        dry_run: bool,
        reason: &str,
    ) {
        add(&self.counts.uploaded, 1);
        if !dry_run {
            self.pulse.uploaded(key, path);
        }
        self.transferred("upload", (key, path, size), elapsed, dry_run, reason);
    }

    /// A restored file (or, with `dry_run`, one that would be).
    pub fn downloaded(
        &self,
        key: &str,
        path: &str,
        size: u64,
        elapsed: Duration,
        dry_run: bool,
        reason: &str,
    ) {
        add(&self.counts.downloaded, 1);
        self.transferred("download", (key, path, size), elapsed, dry_run, reason);
    }

    /// The line of an upload or a download: `what` is the object's key,
    /// the file's path and the size.
    fn transferred(
        &self,
        action: &str,
        what: (&str, &str, u64),
        elapsed: Duration,
        dry_run: bool,
        reason: &str,
    ) {
        let (key, path, size) = what;
        add(&self.counts.bytes, size);
        if self.level == Level::Quiet {
            return;
        }
        if self.json {
            self.json_line(
                json!({"action": action, "key": key, "path": path, "size": size,
                        "ms": elapsed.as_millis() as u64, "dry_run": dry_run, "reason": reason}),
            );
            return;
        }
        let (key, size) = (printable(key), human_size(size));
        let ms = elapsed.as_millis();
        self.out(&if dry_run {
            format!("would {action} {key} ({size}, {reason})")
        } else if self.level >= Level::Verbose {
            format!("{action} {key} ({size}, {ms} ms, {reason})")
        } else {
            format!("{action} {key} ({size}, {ms} ms)")
        });
    }

    /// A deleted key; `done` is its size and how long the request took,
    /// when known.
    pub fn deleted(&self, key: &str, done: Option<(u64, Duration)>, dry_run: bool) {
        add(&self.counts.deleted, 1);
        self.pulse.succeeded(key);
        if self.level == Level::Quiet {
            return;
        }
        if self.json {
            let mut v = json!({"action": "delete", "key": key, "dry_run": dry_run});
            if let Some((size, elapsed)) = done {
                v["size"] = json!(size);
                v["ms"] = json!(elapsed.as_millis() as u64);
            }
            self.json_line(v);
        } else if dry_run {
            self.out(&format!("would delete {}", printable(key)));
        } else if let Some((size, elapsed)) = done {
            self.out(&format!(
                "delete {} ({}, {} ms)",
                printable(key),
                human_size(size),
                elapsed.as_millis()
            ));
        } else {
            self.out(&format!("delete {}", printable(key)));
        }
    }

    /// A server-side copy (a renamed file).
    pub fn copied(&self, key: &str, from: &str, size: u64, elapsed: Duration) {
        add(&self.counts.copied, 1);
        self.pulse.uploaded(key, key);
        if self.level == Level::Quiet {
            return;
        }
        // Onto itself: the object got new headers.
        if key == from {
            if self.json {
                self.json_line(json!({"action": "headers", "key": key, "size": size,
                                      "ms": elapsed.as_millis() as u64}));
            } else {
                self.out(&format!(
                    "headers {} (copied onto itself, {} ms)",
                    printable(key),
                    elapsed.as_millis()
                ));
            }
            return;
        }
        if self.json {
            self.json_line(
                json!({"action": "copy", "key": key, "from": from, "size": size,
                        "ms": elapsed.as_millis() as u64}),
            );
        } else {
            self.out(&format!(
                "copy {} from {} ({}, {} ms)",
                printable(key),
                printable(from),
                human_size(size),
                elapsed.as_millis()
            ));
        }
    }

    /// A dry run's server-side copy from the primary.
    pub fn would_copy(&self, key: &str, from: &str, size: u64, reason: &str) {
        add(&self.counts.copied, 1);
        if self.level == Level::Quiet {
            return;
        }
        // Onto itself: it would get new headers.
        if reason == crate::transfer::RESTYLED {
            if self.json {
                self.json_line(json!({"action": "headers", "key": key, "size": size,
                                      "dry_run": true}));
            } else {
                self.out(&format!("would set the headers of {}", printable(key)));
            }
            return;
        }
        if self.json {
            self.json_line(
                json!({"action": "copy", "key": key, "from": from, "size": size,
                                  "dry_run": true, "reason": reason}),
            );
        } else {
            self.out(&format!(
                "would copy {} from {} ({}, {reason})",
                printable(key),
                printable(from),
                human_size(size)
            ));
        }
    }

    /// A line about the run itself (the daemon is ready, a reconcile
    /// finished); `fields` go into the JSON object.
    pub fn status(&self, action: &str, text: &str, mut fields: serde_json::Value) {
        if self.level == Level::Quiet {
            return;
        }
        if self.json {
            fields["action"] = json!(action);
            fields["message"] = json!(text);
            self.json_line(fields);
        } else {
            self.out(text);
        }
    }

    /// A guard held something back (deletions over `--max-delete`): on
    /// stderr as a warning, or as a JSON line, printed even with `-q`.
    pub fn held_back(&self, action: &str, text: &str, mut fields: serde_json::Value) {
        if self.json {
            fields["action"] = json!(action);
            fields["message"] = json!(text);
            self.json_line(fields);
        } else {
            self.err(&format!("warning: {text}"));
        }
    }

    /// Like [`Reporter::status`], at `-v` only.
    pub fn verbose_status(&self, action: &str, text: &str, fields: serde_json::Value) {
        if self.level >= Level::Verbose {
            self.status(action, text, fields);
        }
    }

    /// An unchanged file; printed only at `-v`.
    pub fn skipped(&self, key: &str, why: &str) {
        add(&self.counts.skipped, 1);
        if self.level >= Level::Verbose {
            if self.json {
                self.json_line(json!({"action": "skip", "key": key, "reason": why}));
            } else {
                self.out(&format!("skip {} ({why})", printable(key)));
            }
        }
    }

    /// One file or key that failed; the run goes on.
    pub fn failed(&self, what: &str, message: &str) {
        add(&self.counts.failed, 1);
        self.pulse.failed(what, message);
        if self.json {
            self.json_line(json!({"action": "error", "path": what, "message": message}));
        } else {
            self.err(&format!(
                "error: {}: {}",
                printable(what),
                printable(message)
            ));
        }
    }

    /// A path left alone on purpose (symlink, special file): a note, not
    /// an error.
    pub fn note(&self, what: &str, message: &str) {
        add(&self.counts.skipped, 1);
        self.remark(what, message);
    }

    /// A note about a path that is mirrored all the same: not counted.
    pub fn remark(&self, what: &str, message: &str) {
        if self.level >= Level::Normal {
            if self.json {
                self.json_line(json!({"action": "note", "path": what, "message": message}));
            } else {
                self.err(&format!(
                    "note: {}: {}",
                    printable(what),
                    printable(message)
                ));
            }
        }
    }

    /// A way in which a mirror differs from its directory (`verify`):
    /// printed at every level, on stdout.
    pub fn difference(&self, kind: &str, key: &str, detail: &str) {
        if self.json {
            self.json_line(json!({"action": kind, "key": key, "message": detail}));
        } else {
            self.out(&format!("{kind} {}: {}", printable(key), printable(detail)));
        }
    }

    /// The summary's time counts from now.
    pub fn start_clock(&self) {
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// The error that ended a run: printed even with `-q`.
    /// The error that ended the run: on stderr, and with `--json` also as
    /// a `fatal` line on stdout, so a script reading stdout sees why.
    pub fn fatal(&self, message: &str) {
        if self.json {
            self.json_line(json!({"action": "fatal", "message": message}));
        }
        self.err(&format!("error: {message}"));
    }

    pub fn warn(&self, message: &str) {
        if self.level >= Level::Normal {
            self.err(&format!("warning: {message}"));
        }
    }

    /// Is `-vv` on (to skip building debug lines that will not print)?
    pub fn debugging(&self) -> bool {
        self.level >= Level::Debug
    }

    pub fn debug(&self, message: &str) {
        if self.level >= Level::Debug {
            self.err(&format!("debug: {message}"));
        }
    }

    pub fn scanned(&self) {
        add(&self.counts.scanned, 1);
        self.pulse.beat();
        self.tick();
    }

    /// Redraws the progress line at most five times a second.
    pub fn tick(&self) {
        if !self.progress {
            return;
        }
        let Ok(mut last) = self.last_progress.try_lock() else {
            return;
        };
        if last.elapsed() < Duration::from_millis(200) {
            return;
        }
        *last = Instant::now();
        let c = &self.counts;
        let downloaded = c.downloaded.load(Ordering::Relaxed);
        let line = if downloaded > 0 {
            format!(
                "\r\x1b[Kdownloaded {downloaded} ({}), skipped {}, failed {}",
                human_size(c.bytes.load(Ordering::Relaxed)),
                c.skipped.load(Ordering::Relaxed),
                c.failed.load(Ordering::Relaxed),
            )
        } else {
            format!(
                "\r\x1b[Kscanned {}, uploaded {} ({}), deleted {}, failed {}",
                c.scanned.load(Ordering::Relaxed),
                c.uploaded.load(Ordering::Relaxed),
                human_size(c.bytes.load(Ordering::Relaxed)),
                c.deleted.load(Ordering::Relaxed),
                c.failed.load(Ordering::Relaxed),
            )
        };
        use std::io::Write as _;
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    pub fn failures(&self) -> u64 {
        self.counts.failed.load(Ordering::Relaxed)
    }

    pub fn summary(&self, dry_run: bool) {
        let c = &self.counts;
        let started = *self.started.lock().unwrap_or_else(|e| e.into_inner());
        let secs = started.elapsed().as_secs_f64();
        if self.json {
            self.json_line(json!({"action": "summary", "scanned": get(&c.scanned),
                "uploaded": get(&c.uploaded), "copied": get(&c.copied), "deleted": get(&c.deleted),
                "skipped": get(&c.skipped), "failed": get(&c.failed), "bytes": get(&c.bytes),
                "seconds": (secs * 1000.0).round() / 1000.0, "dry_run": dry_run}));
            return;
        }
        self.clear_progress();
        if self.level == Level::Quiet {
            return;
        }
        let verb = if dry_run { "would upload" } else { "uploaded" };
        let del = if dry_run { "would delete" } else { "deleted" };
        let copied = match (get(&c.copied), dry_run) {
            (0, _) => String::new(),
            (n, false) => format!(", copied {n}"),
            (n, true) => format!(", would copy {n}"),
        };
        self.out(&format!(
            "scanned {}, {verb} {} ({}){copied}, {del} {}, skipped {}, failed {} in {secs:.2} s",
            get(&c.scanned),
            get(&c.uploaded),
            human_size(get(&c.bytes)),
            get(&c.deleted),
            get(&c.skipped),
            get(&c.failed),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_on_one_line() {
        assert_eq!(printable("new\nline\t.txt"), "new\\nline\\t.txt");
        assert_eq!(printable("日本 a+b"), "日本 a+b");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(human_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(human_duration(Duration::ZERO), "0s");
        assert_eq!(human_duration(Duration::from_secs(86_400 + 61)), "1d1m1s");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(256 << 20), "256.0 MiB");
    }
}
