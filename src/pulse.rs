//! How a running daemon is doing, told by the loop that does the work: a
//! heartbeat (so a stuck loop is seen as stuck), whether its initial
//! reconcile is done, a one-line status and the last error. systemd hears
//! it through `sd_notify` ([`spawn_systemd_notifier`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::report::Reporter;
use crate::sync::Stop;

/// The instant heartbeats are counted from.
fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// One daemon's signs of life.
#[derive(Debug, Default)]
pub struct Pulse {
    /// Milliseconds after [`epoch`] of the last sign of work.
    beat_ms: AtomicU64,
    ready: AtomicBool,
    status: Mutex<String>,
    last_error: Mutex<Option<(SystemTime, String)>>,
    /// Paths (or keys) whose last attempt failed, with the error; a later
    /// success takes them off. At most [`MAX_FAILING`].
    failing: Mutex<BTreeMap<String, (SystemTime, String)>>,
    last_upload: Mutex<Option<(SystemTime, String)>>,
    /// The daemon's last status record (for metrics).
    record: Mutex<Option<crate::status::Record>>,
    /// Transfers that failed, by whose problem it was: this request (or
    /// file), the server, the configuration.
    failures: [AtomicU64; 3],
}

/// Failing paths remembered, at most (the rest are counted in the logs).
const MAX_FAILING: usize = 100;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pulse {
    /// A pulse that has just beaten.
    pub fn started() -> Pulse {
        let p = Pulse::default();
        p.beat();
        p
    }

    /// The loop is alive and working.
    pub fn beat(&self) {
        let ms = epoch().elapsed().as_millis() as u64;
        self.beat_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the last sign of work.
    pub fn since_beat(&self) -> Duration {
        let last = Duration::from_millis(self.beat_ms.load(Ordering::Relaxed));
        epoch().elapsed().saturating_sub(last)
    }

    /// The initial reconcile is done (or failed and will be retried).
    pub fn set_ready(&self) {
        self.beat();
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_status(&self, status: String) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    pub fn status(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `what` (a path or key) failed with `message`.
    pub fn failed(&self, what: &str, message: &str) {
        let now = SystemTime::now();
        *lock(&self.last_error) = Some((now, format!("{what}: {message}")));
        let mut failing = lock(&self.failing);
        if failing.len() < MAX_FAILING || failing.contains_key(what) {
            failing.insert(what.to_string(), (now, message.to_string()));
        }
    }

    /// `what` (a path or key) was mirrored: it fails no more.
    pub fn succeeded(&self, what: &str) {
        lock(&self.failing).remove(what);
    }

    /// An upload of `key` went through.
    pub fn uploaded(&self, key: &str, path: &str) {
        self.succeeded(path);
        self.succeeded(key);
        *lock(&self.last_upload) = Some((SystemTime::now(), key.to_string()));
    }

    /// What fails now, oldest key first.
    pub fn failing(&self) -> Vec<(String, SystemTime, String)> {
        lock(&self.failing)
            .iter()
            .map(|(k, (at, m))| (k.clone(), *at, m.clone()))
            .collect()
    }

    /// A transfer failed; `blame` says whose problem it was.
    pub fn count_failure(&self, blame: crate::store::Blame) {
        self.failures[blame as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Failed transfers by class: `request`, `server`, `config`.
    pub fn failures_by_class(&self) -> [(&'static str, u64); 3] {
        let n = |b: crate::store::Blame| self.failures[b as usize].load(Ordering::Relaxed);
        use crate::store::Blame;
        [
            ("request", n(Blame::Request)),
            ("server", n(Blame::Server)),
            ("config", n(Blame::Fatal)),
        ]
    }

    pub fn set_record(&self, record: crate::status::Record) {
        *lock(&self.record) = Some(record);
    }

    pub fn record(&self) -> Option<crate::status::Record> {
        lock(&self.record).clone()
    }

    pub fn last_upload(&self) -> Option<(SystemTime, String)> {
        lock(&self.last_upload).clone()
    }

    /// The last error and when it happened.
    pub fn last_error(&self) -> Option<(SystemTime, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The unit's `WatchdogSec=`, from systemd's variables: `WATCHDOG_USEC`,
/// for this process when `WATCHDOG_PID` names it or is not set (as
/// sd_watchdog_enabled(3) reads them).
fn watchdog(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        Some(Ok(p)) if p != std::process::id() => None,
        Some(Err(_)) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// How often the notifier speaks to systemd: three times per watchdog
/// interval, and at least every 5 s for the status line.
fn period(watchdog: Option<Duration>) -> Duration {
    watchdog
        .map(|w| w / 3)
        .unwrap_or(Duration::from_secs(5))
        .clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// Under systemd (`NOTIFY_SOCKET` set), tells it `READY=1` once every
/// daemon's initial reconcile is done, a `STATUS=` line of them all,
/// `WATCHDOG=1` while every daemon's loop shows signs of work within the
/// unit's `WatchdogSec=` (a stuck one stops the pings, and systemd
/// restarts the service), and `STOPPING=1` on a stop. Without systemd it
/// does nothing.
pub fn spawn_systemd_notifier(daemons: Vec<Arc<Reporter>>, stop: Arc<Stop>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
    );
    tokio::spawn(async move {
        let mut ready = false;
        loop {
            // Until READY=1 is sent, look often: systemd waits for it.
            let wait = if ready {
                period(watchdog)
            } else {
                period(watchdog).min(Duration::from_millis(200))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait() => {}
            }
            if stop.requested() {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                return;
            }
            let status = daemons
                .iter()
                .map(|r| r.pulse.status())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            let mut states = vec![sd_notify::NotifyState::Status(&status)];
            if !ready && daemons.iter().all(|r| r.pulse.is_ready()) {
                ready = true;
                states.push(sd_notify::NotifyState::Ready);
            }
            if let Some(w) = watchdog {
                if daemons.iter().all(|r| r.pulse.since_beat() < w) {
                    states.push(sd_notify::NotifyState::Watchdog);
                }
            }
            // systemd may be gone (a restart of the manager): nothing to do.
            let _ = sd_notify::notify(false, &states);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pulse_tells_its_age_and_state() {
        let p = Pulse::default();
        p.beat();
        assert!(p.since_beat() < Duration::from_secs(5));
        assert!(!p.is_ready());
        p.set_ready();
        assert!(p.is_ready());
        p.set_status("pending 3".into());
        assert_eq!(p.status(), "pending 3");
        p.failed("a.txt", "boom");
        assert_eq!(p.last_error().map(|e| e.1).as_deref(), Some("a.txt: boom"));
        assert_eq!(p.failing().len(), 1);
        p.uploaded("site/a.txt", "a.txt");
        assert!(p.failing().is_empty());
        assert_eq!(p.last_upload().map(|u| u.1).as_deref(), Some("site/a.txt"));
    }

    #[test]
    fn the_watchdog_is_read_as_systemd_sets_it() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog(Some("3000000"), None),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            watchdog(Some("3000000"), Some(&me)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(watchdog(Some("3000000"), Some("1")), None);
        assert_eq!(watchdog(Some("0"), None), None);
        assert_eq!(watchdog(Some("x"), None), None);
        assert_eq!(watchdog(None, Some(&me)), None);
    }

    #[test]
    fn the_notifier_speaks_often_enough_for_the_watchdog() {
        assert_eq!(period(None), Duration::from_secs(5));
        assert_eq!(period(Some(Duration::from_secs(3))), Duration::from_secs(1));
        assert_eq!(
            period(Some(Duration::from_secs(60))),
            Duration::from_secs(5)
        );
        assert_eq!(
            period(Some(Duration::from_millis(30))),
            Duration::from_millis(100)
        );
    }
}
