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
    /// reconcile. The text says which.
    Changed(String),
}

#[derive(Debug)]
pub struct Root {
    dir: PathBuf,
    /// (device, inode) of the directory the watches are on.
    watched: Option<(u64, u64)>,
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
            health: health(dir, filter),
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
    }

    /// The watches were lost (the root went away).
    pub fn unwatched(&mut self) {
        self.watched = None;
    }

    /// Looks at the root now.
    pub fn look(&mut self, filter: &Filter) -> Seen {
        let now = health(&self.dir, filter);
        let was = std::mem::replace(&mut self.health, now);
        let seen = match now {
            Health::Gone if was != Health::Gone => {
                self.watched = None;
                Seen::Gone
            }
            Health::Gone => Seen::Same,
            _ if identity(&self.dir) != self.watched => {
                let why = match (self.watched, self.target()) {
                    (Some(_), Some(target)) => format!(
                        "{} now leads to {} (the link was switched)",
                        self.dir.display(),
                        target.display()
                    ),
                    (Some(_), None) => {
                        format!("{} is another directory now", self.dir.display())
                    }
                    (None, _) => format!("{} is back", self.dir.display()),
                };
                Seen::Changed(why)
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

/// Present when the root holds something sync would mirror or report
/// (hidden and excluded names do not count, as for sync's empty-tree
/// guard).
fn health(dir: &Path, filter: &Filter) -> Health {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mirrored = entries.filter_map(|e| e.ok()).any(|e| {
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                e.file_name()
                    .to_str()
                    .is_none_or(|name| !filter.excludes_path(name, is_dir))
            });
            if mirrored {
                Health::Present
            } else {
                Health::Empty
            }
        }
        Err(_) => Health::Gone,
    }
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
            Seen::Changed(why) => assert!(why.contains("releases/r2"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Switched again while the new watches were being started: the
        // identity taken before them is r2's, so the next look sees r1.
        let before = root.about_to_watch();
        std::fs::remove_file(&current).expect("rm");
        std::os::unix::fs::symlink("releases/r1", &current).expect("symlink");
        root.watching(before);
        assert!(matches!(root.look(&f), Seen::Changed(_)));
        std::fs::remove_file(&current).expect("rm");
        std::os::unix::fs::symlink("releases/r2", &current).expect("symlink");
        let before = root.about_to_watch();
        root.watching(before);
        assert_eq!(root.look(&f), Seen::Same);

        std::fs::remove_file(base.join("releases/r2/index.html")).expect("rm");
        std::fs::write(base.join("releases/r2/.hidden"), "x").expect("write");
        assert_eq!(root.look(&f), Seen::Emptied);
        assert_eq!(root.health(), Health::Empty);
        assert_eq!(root.look(&f), Seen::Same);
        std::fs::write(base.join("releases/r2/back.html"), "x").expect("write");
        assert_eq!(root.look(&f), Seen::Refilled);

        std::fs::remove_file(&current).expect("rm link");
        assert_eq!(root.look(&f), Seen::Gone);
        assert_eq!(root.look(&f), Seen::Same);
        std::os::unix::fs::symlink("releases/r1", &current).expect("symlink");
        assert!(matches!(root.look(&f), Seen::Changed(why) if why.contains("is back")));
    }
}
