//! From the kernel to the daemon: the watcher, the bounded queue between
//! notify's thread and the daemon, and what each event means.
//!
//! notify's callback runs on its own thread and must not block: it
//! `try_send`s each event into a bounded channel (its size is
//! `--event-queue`). When the channel is full the event is dropped and a
//! flag says so; the daemon then reconciles the whole tree, which finds
//! whatever the dropped events were about. The kernel's own queue overflow
//! arrives as an event with the Rescan flag and means the same.
//!
//! The watcher asks the kernel only for events that can change the mirror:
//! created, removed, renamed, written, attributes, closed after writing.
//! Opens and closes after reading never reach the daemon, so a read-only
//! load on the tree costs it nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, EventKindMask, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, Notify};

use super::pending::Mark;

pub type Watcher = notify::RecommendedWatcher;

/// What one event says about the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Something at the path may be different now; the mark says what
    /// else the event tells (the file is whole, the path is new).
    Touched { path: PathBuf, mark: Mark },
    /// A rename seen whole, both names known.
    Renamed { from: PathBuf, to: PathBuf },
    /// Events were lost: only a full reconcile can tell what changed.
    Rescan,
}

/// What an event means; pure, so it is tested with made-up events.
pub fn classify(ev: &Event) -> Vec<Change> {
    if ev.need_rescan() {
        return vec![Change::Rescan];
    }
    let touched = |mark: Mark| {
        ev.paths
            .iter()
            .map(|p| Change::Touched {
                path: p.clone(),
                mark,
            })
            .collect()
    };
    match &ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => touched(Mark::COMPLETE),
        EventKind::Access(_) | EventKind::Other | EventKind::Any => Vec::new(),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => match &ev.paths[..] {
            [from, to] => vec![Change::Renamed {
                from: from.clone(),
                to: to.clone(),
            }],
            _ => touched(Mark::CHANGED),
        },
        // Moved in: whole, as a rename is atomic, and new at this name.
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => touched(Mark::MOVED_IN),
        EventKind::Create(_) => touched(Mark::CREATED),
        EventKind::Remove(_) | EventKind::Modify(_) => touched(Mark::CHANGED),
    }
}

/// Flags set from other threads (notify's, the signal handler's), with a
/// wake-up for the daemon's loop.
#[derive(Debug, Default)]
pub struct Flags {
    /// Events were dropped because the queue was full.
    pub overflowed: AtomicBool,
    /// SIGHUP: a full reconcile was asked for.
    pub hangup: AtomicBool,
    pub wake: Notify,
}

impl Flags {
    pub fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Was `flag` raised since the last look?
    pub fn take(flag: &AtomicBool) -> bool {
        flag.swap(false, Ordering::SeqCst)
    }
}

pub type Inbound = notify::Result<Event>;

/// The inotify limits, for the messages that say how to raise them.
pub fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn watch_limit_message(dir: &Path, every: std::time::Duration) -> String {
    format!(
        "the inotify watch limit is reached (fs.inotify.max_user_watches = {}): changes in some \
         directories under {} are not seen as they happen. Raise it with \
         `sudo sysctl fs.inotify.max_user_watches=1048576`, and keep it with \
         `echo fs.inotify.max_user_watches=1048576 | sudo tee /etc/sysctl.d/90-s3ma.conf`, then \
         restart s3ma. Until then the whole tree is reconciled every {}",
        sysctl("max_user_watches"),
        dir.display(),
        crate::report::human_duration(every)
    )
}

/// The events a mirror cares about (see the module's doc).
fn mask() -> EventKindMask {
    EventKindMask::CREATE
        | EventKindMask::REMOVE
        | EventKindMask::ALL_MODIFY
        | EventKindMask::ACCESS_CLOSE
}

/// A watcher at work, and what is missing from it.
pub struct Started {
    pub watcher: Watcher,
    /// Part of the tree is not watched (the watch limit, an unreadable
    /// directory): the caller falls back to periodic reconciles.
    pub partial: Option<String>,
    /// The directory holding a symbolic-link root is not watched: a switch
    /// is seen by the regular look at the root instead of at once.
    pub warning: Option<String>,
}

/// Starts watching `dir` (and, when it is a symbolic link, the directory
/// holding the link, to see it switched). A tree that can only be watched
/// in part is not an error: [`Started`] says what is missing.
pub fn start(
    dir: &Path,
    follow_symlinks: bool,
    tx: mpsc::Sender<Inbound>,
    flags: Arc<Flags>,
    limited_every: std::time::Duration,
) -> Result<Started> {
    let handler = move |res: Inbound| {
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(res) {
            flags.raise(&flags.overflowed);
        }
    };
    let config = notify::Config::default()
        .with_follow_symlinks(follow_symlinks)
        .with_event_kinds(mask());
    let mut watcher = Watcher::new(handler, config).map_err(|e| {
        anyhow!(
            "cannot start watching for changes: {e}; if it says too many open files, raise \
             fs.inotify.max_user_instances (now {}) with `sudo sysctl \
             fs.inotify.max_user_instances=1024`",
            sysctl("max_user_instances")
        )
    })?;
    let partial = match tokio::task::block_in_place(|| watcher.watch(dir, RecursiveMode::Recursive))
    {
        Ok(()) => None,
        Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
            Some(watch_limit_message(dir, limited_every))
        }
        Err(e) => Some(format!(
            "cannot watch all of {}: {e}; changes there are found by a full reconcile every {} \
             instead",
            dir.display(),
            crate::report::human_duration(limited_every)
        )),
    };
    let warning = link_parent(dir).and_then(|parent| {
        let e = watcher.watch(&parent, RecursiveMode::NonRecursive).err()?;
        Some(format!(
            "cannot watch {}, which holds the link {} ({e}); a switch of the link is seen \
             within seconds instead of at once",
            parent.display(),
            dir.display()
        ))
    });
    Ok(Started {
        watcher,
        partial,
        warning,
    })
}

/// The directory holding `dir`, when `dir` is a symbolic link.
fn link_parent(dir: &Path) -> Option<PathBuf> {
    let meta = std::fs::symlink_metadata(dir).ok()?;
    if !meta.file_type().is_symlink() {
        return None;
    }
    dir.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, Flag, RemoveKind};

    fn ev(kind: EventKind, paths: &[&str]) -> Event {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    fn touched(p: &str, mark: Mark) -> Change {
        Change::Touched {
            path: PathBuf::from(p),
            mark,
        }
    }

    #[test]
    fn events_become_changes() {
        let cases = [
            (
                ev(EventKind::Create(CreateKind::File), &["/r/a"]),
                vec![touched("/r/a", Mark::CREATED)],
            ),
            (
                ev(
                    EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                    &["/r/a"],
                ),
                vec![touched("/r/a", Mark::CHANGED)],
            ),
            (
                ev(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    &["/r/a"],
                ),
                vec![touched("/r/a", Mark::COMPLETE)],
            ),
            (
                ev(
                    EventKind::Access(AccessKind::Close(AccessMode::Read)),
                    &["/r/a"],
                ),
                vec![],
            ),
            (
                ev(
                    EventKind::Access(AccessKind::Open(AccessMode::Any)),
                    &["/r/a"],
                ),
                vec![],
            ),
            (
                ev(EventKind::Remove(RemoveKind::Folder), &["/r/d"]),
                vec![touched("/r/d", Mark::CHANGED)],
            ),
            (
                ev(
                    EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                    &["/r/a"],
                ),
                vec![touched("/r/a", Mark::CHANGED)],
            ),
            (
                ev(
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                    &["/r/b"],
                ),
                vec![touched("/r/b", Mark::MOVED_IN)],
            ),
            (
                ev(
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                    &["/r/a", "/r/b"],
                ),
                vec![Change::Renamed {
                    from: PathBuf::from("/r/a"),
                    to: PathBuf::from("/r/b"),
                }],
            ),
            (
                ev(EventKind::Other, &[]).set_flag(Flag::Rescan),
                vec![Change::Rescan],
            ),
            (ev(EventKind::Other, &["/r/x"]), vec![]),
        ];
        for (event, want) in cases {
            assert_eq!(classify(&event), want, "{event:?}");
        }
    }

    #[test]
    fn the_kernel_is_asked_for_no_read_events() {
        let m = mask();
        assert!(!m.intersects(EventKindMask::ACCESS_OPEN | EventKindMask::ACCESS_CLOSE_NOWRITE));
        assert!(m.contains(EventKindMask::CORE | EventKindMask::ACCESS_CLOSE));
    }

    #[test]
    fn only_a_symlinked_root_has_its_parent_watched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("releases/r1");
        std::fs::create_dir_all(&real).expect("mkdir");
        let link = dir.path().join("current");
        std::os::unix::fs::symlink("releases/r1", &link).expect("symlink");
        assert_eq!(link_parent(&link).as_deref(), Some(dir.path()));
        assert_eq!(link_parent(&real), None);
    }
}
