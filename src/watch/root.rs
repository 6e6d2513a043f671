//! The watched directory itself: is it there, does it hold anything, and
//! is it still the directory the watches are on?
//!
//! The root is named as the user gave it; when that is a symbolic link
//! (`/srv/app/current -> releases/r1`) a deploy may switch it to another
//! directory at any moment. Its identity is the (device, inode) of what
//! the name leads to now: a different one means the watches are on the
//! wrong tree, and the daemon re-roots (new watches, one reconcile).
//! Deletions only happen while the root is [`Health::Present`]: an
//! unmounted disk or a vanished directory must not empty the bucket.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::scan::Filter;

/// Where the root stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It holds something that is mirrored.
    Present,
    /// It is there but holds nothing that is mirrored.
    Empty,
    /// It cannot be read (missing, unmounted, moved away).
    Gone,
}

/// What a look at the root found, for the daemon to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Nothing new.
    Same,
    /// It just became unreadable: the watches are gone with it.
    Gone,
    /// It just became empty (deletions stop).
    Emptied,
    /// It holds files again after being announced empty.
    Refilled,
    /// It is there, but not the directory watched (back after being gone,
    /// made anew, or a symbolic link switched): watch it afresh and
    /// reconcile. The text says which; `other` when it is not the directory
    /// watched last (its files may match the records by chance: hash them).
    Changed { why: String, other: bool },
}

#[derive(Debug)]
pub struct Root {
    dir: PathBuf,
    /// (device, inode) of the directory the watches are on.
    watched: Identity,
    /// The last directory watched, also while it is gone.
    last: Identity,
    health: Health,
    /// Becoming empty was said (so coming back is said too).
    empty_announced: bool,
}

/// What the root's name leads to now: (device, inode).
pub type Identity = Option<(u64, u64)>;

fn identity(dir: &Path) -> Identity {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

impl Root {
    /// The root as it is before it is first watched; take
    /// [`Root::about_to_watch`] before starting the watches and give it to
    /// [`Root::watching`] after.
    pub fn new(dir: &Path, filter: &Filter) -> Root {
        Root {
            dir: dir.to_path_buf(),
            watched: None,
            last: None,
            health: health(dir, filter).unwrap_or(Health::Present),
            empty_announced: false,
        }
    }

    /// The identity to record once the watches are started: taken before
    /// they are, so a switch while they start is seen at the next look
    /// (recording it after would hide a watch on the old directory).
    pub fn about_to_watch(&self) -> Identity {
        identity(&self.dir)
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Where a symbolic link root leads now, for messages.
    pub fn target(&self) -> Option<PathBuf> {
        std::fs::read_link(&self.dir).ok()
    }

    /// The watches were (re)started on what the root was at `before`.
    pub fn watching(&mut self, before: Identity) {
        self.watched = before;
        self.last = before;
    }

    /// The watches were lost (the root went away).
    pub fn unwatched(&mut self) {
        self.watched = None;
    }

    /// The identity of the directory watched, as text to keep.
    pub fn watched_meta(&self) -> Option<String> {
        self.watched.map(|(dev, ino)| format!("{dev}:{ino}"))
    }

    /// Is the directory watched now another one than `kept` (the identity
    /// kept at the last reconcile, by an earlier run)?
    pub fn switched_since(&self, kept: Option<&str>) -> bool {
        kept.is_some_and(|k| Some(k) != self.watched_meta().as_deref())
    }

    /// Looks at the root now.
    pub fn look(&mut self, filter: &Filter) -> Seen {
        // A look that failed for want of resources tells nothing.
        let Some(now) = health(&self.dir, filter) else {
            return Seen::Same;
        };
        let was = std::mem::replace(&mut self.health, now);
        let seen = match now {
            Health::Gone if was != Health::Gone => {
                self.watched = None;
                Seen::Gone
            }
            Health::Gone => Seen::Same,
            _ if identity(&self.dir) != self.watched => {
                let other = identity(&self.dir) != self.last;
                let why = match (self.watched, self.target()) {
                    (Some(_), Some(target)) => format!(
                        "{} now leads to {} (the link was switched)",
                        self.dir.display(),
                        target.display()
                    ),
                    (Some(_), None) => {
                        format!("{} is another directory now", self.dir.display())
                    }
                    (None, _) if other => {
                        format!("{} is back, as another directory", self.dir.display())
                    }
                    (None, _) => format!("{} is back", self.dir.display()),
                };
                Seen::Changed { why, other }
            }
            Health::Empty if was == Health::Present => {
                self.empty_announced = true;
                Seen::Emptied
            }
            Health::Present if was == Health::Empty && self.empty_announced => Seen::Refilled,
            _ => Seen::Same,
        };
        if now != Health::Empty {
            self.empty_announced = false;
        }
        seen
    }
}

/// Entries a look at the root reads at most, looking for something that
/// is mirrored below empty directories; beyond, the root counts as present.
const LOOK_LIMIT: usize = 10_000;

/// Present when the tree holds something sync would mirror or report
/// (hidden and excluded names do not count, nor do empty directories, as
/// for sync's empty-tree guard). Usually the first entries tell. Gone when
/// it is missing, not a directory or not readable; `None` when the look
/// failed otherwise (out of file descriptors, say).
fn health(dir: &Path, filter: &Filter) -> Option<Health> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            return Some(Health::Gone)
        }
        Err(_) => return None,
    };
    let mut dirs = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            // A name that cannot be a key is reported by sync: not empty.
            return Some(Health::Present);
        };
        if filter.excludes_path(&name, is_dir) {
            continue;
        }
        if !is_dir {
            return Some(Health::Present);
        }
        dirs.push(name);
    }
    let mut seen = 0;
    for sub in dirs {
        let walk = walkdir::WalkDir::new(dir.join(&sub))
            .min_depth(1)
            .into_iter();
        let mut walk = walk.filter_entry(|e| {
            let rel = e.path().strip_prefix(dir).ok().and_then(Path::to_str);
            rel.is_some_and(|r| !filter.excludes_path(r, e.file_type().is_dir()))
        });
        for e in walk.by_ref().filter_map(|e| e.ok()) {
            seen += 1;
            if !e.file_type().is_dir() || seen > LOOK_LIMIT {
                return Some(Health::Present);
            }
        }
    }
    Some(Health::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FilterConfig;

    fn filter(root: &Path) -> Filter {
        Filter::new(root, &FilterConfig::default(), None).expect("filter")
    }

    #[test]
    fn a_switched_link_an_emptied_and_a_vanished_root_are_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        for r in ["r1", "r2"] {
            std::fs::create_dir_all(base.join("releases").join(r)).expect("mkdir");
            std::fs::write(base.join("releases").join(r).join("index.html"), r).expect("write");
        }
        let current = base.join("current");
        std::os::unix::fs::symlink("releases/r1", &current).expect("symlink");
        let f = filter(&current);
        let mut root = Root::new(&current, &f);
        let before = root.about_to_watch();
        root.watching(before);
        assert_eq!(root.look(&f), Seen::Same);

        // A deploy: a new link renamed over the old one.
        std::os::unix::fs::symlink("releases/r2", base.join("current.tmp")).expect("symlink");
        std::fs::rename(base.join("current.tmp"), &current).expect("switch");
        match root.look(&f) {
            Seen::Changed { why, other } => assert!(other && why.contains("releases/r2"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Switched again while the new watches were being started: the
        // identity taken before them is r2's, so the next look sees r1.
        let before = root.about_to_watch();
        std::fs::remove_file(&current).expect("rm");
        std::os::unix::fs::symlink("releases/r1", &current).expect("symlink");
        root.watching(before);
        assert!(matches!(root.look(&f), Seen::Changed { .. }));
        std::fs::remove_file(&current).expect("rm");
        std::os::unix::fs::symlink("releases/r2", &current).expect("symlink");
        let before = root.about_to_watch();
        root.watching(before);
        assert_eq!(root.look(&f), Seen::Same);

        std::fs::remove_file(base.join("releases/r2/index.html")).expect("rm");
        std::fs::write(base.join("releases/r2/.hidden"), "x").expect("write");
        // Empty directories hold nothing either.
        std::fs::create_dir_all(base.join("releases/r2/a/b/c")).expect("mkdir");
        assert_eq!(root.look(&f), Seen::Emptied);
        assert_eq!(root.health(), Health::Empty);
        assert_eq!(root.look(&f), Seen::Same);
        std::fs::write(base.join("releases/r2/a/b/back.html"), "x").expect("write");
        assert_eq!(root.look(&f), Seen::Refilled);

        std::fs::remove_file(&current).expect("rm link");
        assert_eq!(root.look(&f), Seen::Gone);
        assert_eq!(root.look(&f), Seen::Same);
        std::os::unix::fs::symlink("releases/r2", &current).expect("symlink");
        assert!(
            matches!(root.look(&f), Seen::Changed { why, other: false } if why.contains("is back"))
        );
        root.watching(root.about_to_watch());
        std::fs::remove_file(&current).expect("rm link");
        assert_eq!(root.look(&f), Seen::Gone);
        std::os::unix::fs::symlink("releases/r1", &current).expect("symlink");
        assert!(matches!(root.look(&f), Seen::Changed { other: true, .. }));
    }
}
