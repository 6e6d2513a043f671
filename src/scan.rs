//! Walks the mirrored directory and yields its files in S3 key order.
//!
//! Order: within each directory, entries are sorted by name bytes with a `/`
//! appended to directory names, so the depth-first walk visits paths in the
//! same byte order as ListObjectsV2 returns keys (`a.txt` < `a/b.txt` <
//! `a0.txt`). The plan merges both streams on that invariant.
//!
//! Filters: hidden names (a leading `.`) and everything under hidden
//! directories unless asked for; gitignore-style `--exclude` globs and the
//! root's `.s3maignore`; symlinks only with `--follow-symlinks` (loops are
//! reported); anything but regular files and directories is skipped with a
//! note. Every skip that is not an explicit exclusion is reported. Paths
//! that exist but are not mirrored are announced as [`ScanItem::Kept`], so
//! the plan never deletes their objects.

use std::cmp::Ordering;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use walkdir::{DirEntry, WalkDir};

use crate::config::FilterConfig;
use crate::keys;

/// Name of the per-tree ignore file at the root.
pub const IGNORE_FILE: &str = ".s3maignore";

/// A regular file to mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// `/`-separated path relative to the root.
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

/// One step of the walk, in key order.
#[derive(Debug)]
pub enum ScanItem {
    File(LocalFile),
    /// A path that exists but is not mirrored (symlink, special file, an
    /// unreadable directory): objects at `rel` and, for a directory, under
    /// `rel/` must not be deleted. `problem` is set when this is an error
    /// the user must fix (exit code 1) rather than a policy skip.
    Kept {
        rel: String,
        dir: bool,
        message: String,
        problem: bool,
    },
    /// An error about a path whose name cannot be a key.
    Problem {
        path: PathBuf,
        message: String,
    },
    /// An error that leaves an unknown part of the tree unread: deletions
    /// are unsafe for the rest of the run.
    Blind {
        path: PathBuf,
        message: String,
    },
    /// A path the filters leave out (a directory with all below it), and
    /// why: said at `-v`, counted as skipped.
    Excluded {
        rel: String,
        dir: bool,
        why: &'static str,
    },
    /// Something worth telling about a path: it vanished while the walk
    /// went by (a live tree changes under it; `skipped`), or its mtime is
    /// beyond what can be recorded (it is mirrored all the same).
    Note {
        path: PathBuf,
        message: String,
        skipped: bool,
    },
}

/// What a note about a vanished path says.
pub const VANISHED: &str = "disappeared during the walk; nothing to mirror";

/// Editors' temporary, lock and backup files, skipped unless
/// `--include-temp-files` (the list is in the README).
pub fn is_temp_name(name: &[u8]) -> bool {
    let ends = |s: &[u8]| name.ends_with(s);
    let starts = |s: &[u8]| name.starts_with(s);
    name == b"4913"
        || ends(b"~")
        || starts(b".#")
        || (name.len() > 1 && starts(b"#") && ends(b"#"))
        || ends(b".swp")
        || ends(b".swo")
        || ends(b".swx")
        || ends(b".swpx")
        || ends(b".kate-swp")
        || starts(b".goutputstream-")
        || (starts(b".~lock.") && ends(b"#"))
        || ends(b"___jb_tmp___")
        || ends(b"___jb_old___")
}

/// The compiled filters for one root.
#[derive(Debug, Clone)]
pub struct Filter {
    ignore: Gitignore,
    include_hidden: bool,
    include_temp: bool,
    /// Stay on the root's file system.
    one_file_system: bool,
    /// The root's device, with `one_file_system`.
    root_dev: Option<u64>,
    /// s3ma's own state directory, when it is inside the root (relative
    /// to it): never mirrored, whatever the other filters say, or its
    /// database would be uploaded each time it is written.
    own: Option<PathBuf>,
}

impl Filter {
    /// The filters for `root`; `state_dir` is left out when it lies inside.
    pub fn new(root: &Path, cfg: &FilterConfig, state_dir: Option<&Path>) -> Result<Filter> {
        let mut b = GitignoreBuilder::new(root);
        for glob in &cfg.exclude {
            b.add_line(None, glob)
                .with_context(|| format!("invalid --exclude pattern '{glob}'"))?;
        }
        let file = root.join(IGNORE_FILE);
        if file.is_file() {
            if let Some(e) = b.add(&file) {
                bail!("cannot use {}: {e}", file.display());
            }
        }
        let ignore = b.build().context("cannot compile the exclude patterns")?;
        let own = state_dir.and_then(|state| {
            let state = std::fs::canonicalize(state).ok()?;
            let root = std::fs::canonicalize(root).ok()?;
            let rel = state.strip_prefix(&root).ok()?;
            (!rel.as_os_str().is_empty()).then(|| rel.to_path_buf())
        });
        Ok(Filter {
            ignore,
            include_hidden: cfg.include_hidden,
            include_temp: cfg.include_temp_files,
            one_file_system: cfg.one_file_system,
            root_dev: cfg
                .one_file_system
                .then(|| std::fs::metadata(root).ok().map(|m| m.dev()))
                .flatten(),
            own,
        })
    }

    /// Is this path on another file system than the root, with
    /// `--one-file-system` (a mount below the root, or below it)?
    pub fn other_file_system(&self, meta: &std::fs::Metadata) -> bool {
        self.root_dev.is_some_and(|dev| meta.dev() != dev)
    }

    /// Is this entry (relative `/` path, last component `name`) excluded?
    fn excludes(&self, rel: &Path, name: &[u8], is_dir: bool) -> bool {
        self.why_excluded(rel, name, is_dir).is_some()
    }

    /// Why this entry is excluded, if it is.
    fn why_excluded(&self, rel: &Path, name: &[u8], is_dir: bool) -> Option<&'static str> {
        if self.own.as_deref() == Some(rel) {
            Some("s3ma's own state directory")
        } else if !self.include_hidden && name.first() == Some(&b'.') {
            Some("hidden (--include-hidden mirrors it)")
        } else if !self.include_temp && !is_dir && is_temp_name(name) {
            Some("an editor's temporary or backup file (--include-temp-files mirrors it)")
        } else if self.ignore.matched(rel, is_dir).is_ignore() {
            Some("excluded by --exclude, the config's exclude or .s3maignore")
        } else {
            None
        }
    }

    /// Would a file at this relative key path be excluded (itself or any
    /// parent directory)? Used to keep excluded remote objects on delete.
    pub fn excludes_key(&self, rel: &str) -> bool {
        self.excludes_path(rel, false)
    }

    /// Like [`Filter::excludes_key`], for a path that may be a directory.
    pub fn excludes_path(&self, rel: &str, is_dir: bool) -> bool {
        let mut parts = rel.split('/').peekable();
        let mut path = PathBuf::new();
        while let Some(part) = parts.next() {
            path.push(part);
            let is_dir = is_dir || parts.peek().is_some();
            if self.excludes(&path, part.as_bytes(), is_dir) {
                return true;
            }
        }
        false
    }
}

/// Key order of two siblings: name bytes, with `/` after directories.
/// When links are followed, a link to a directory counts as a directory
/// (walkdir sorts before it resolves links, so ask the file system).
fn walk_order(a: &DirEntry, b: &DirEntry, follow: bool) -> Ordering {
    let is_dir = |e: &DirEntry| {
        e.file_type().is_dir()
            || (follow
                && e.path_is_symlink()
                && std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir()))
    };
    let slash = |e: &DirEntry| if is_dir(e) { &b"/"[..] } else { &b""[..] };
    let an = a.file_name().as_bytes().iter().chain(slash(a));
    let bn = b.file_name().as_bytes().iter().chain(slash(b));
    an.cmp(bn)
}

/// A file's mtime in nanoseconds since the epoch.
/// Nanoseconds since 1970 fit in an i64 from 1677-09-21 to 2262-04-11:
/// a file dated outside is recorded at that end, said in a note.
fn mtime_out_of_range(meta: &std::fs::Metadata) -> Option<String> {
    const LIMIT: i64 = i64::MAX / 1_000_000_000;
    let secs = meta.mtime();
    let end = if secs >= LIMIT {
        "after 2262-04-11"
    } else if secs <= -LIMIT {
        "before 1677-09-21"
    } else {
        return None;
    };
    Some(format!(
        "its modification time ({secs} s since 1970) is {end}, beyond what s3ma can record; \
         it is recorded as that date, so a later change that keeps its size and this mtime is \
         found only by --checksum (set a real date with touch)"
    ))
}

pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

fn kind_name(ft: &std::fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Checks that the root is a readable directory, with a message that says
/// what to do.
pub fn check_root(root: &Path) -> Result<()> {
    let meta = std::fs::metadata(root).with_context(|| {
        format!(
            "the directory {} does not exist or cannot be reached",
            root.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    std::fs::read_dir(root)
        .with_context(|| format!("cannot read the directory {}", root.display()))?;
    Ok(())
}

/// Walks `root`, calling `emit` for each item in key order. `prefix` is the
/// destination prefix, needed to check key lengths. Stops early when `emit`
/// returns false.
pub fn walk(
    root: &Path,
    prefix: &str,
    filter: &Filter,
    follow_symlinks: bool,
    emit: impl FnMut(ScanItem) -> bool,
) {
    walk_under(root, root, prefix, filter, follow_symlinks, emit)
}

/// Like [`walk`], but only the directory `start` inside `root` (which the
/// caller has checked is not excluded); names stay relative to `root`.
pub fn walk_under(
    root: &Path,
    start: &Path,
    prefix: &str,
    filter: &Filter,
    follow_symlinks: bool,
    mut emit: impl FnMut(ScanItem) -> bool,
) {
    let mut it = WalkDir::new(start)
        .follow_links(follow_symlinks)
        .sort_by(move |a, b| walk_order(a, b, follow_symlinks))
        .into_iter();
    loop {
        let entry = match it.next() {
            None => break,
            Some(Ok(e)) => e,
            // Removed while the walk went by (the start too, when it is a
            // directory below the root that was just reported).
            Some(Err(err))
                if (err.depth() > 0 || start != root)
                    && err
                        .io_error()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
            {
                let path = err.path().unwrap_or(start).to_path_buf();
                let message = VANISHED.to_string();
                if !emit(ScanItem::Note {
                    path,
                    message,
                    skipped: true,
                }) {
                    return;
                }
                continue;
            }
            Some(Err(err)) => {
                let path = err.path().unwrap_or(root).to_path_buf();
                let message = if err.loop_ancestor().is_some() {
                    "symlink loop: the link points to one of its own parent directories; skipped"
                        .to_string()
                } else {
                    match err.io_error() {
                        Some(io) => format!("cannot read: {io}"),
                        None => err.to_string(),
                    }
                };
                let item = match path
                    .strip_prefix(root)
                    .ok()
                    .map(|r| keys::rel_key(r, prefix))
                {
                    Some(Ok(rel)) if !rel.is_empty() => ScanItem::Kept {
                        rel,
                        // An error while reading an entry's metadata could
                        // be about a directory: protect both forms.
                        dir: true,
                        message,
                        problem: true,
                    },
                    // No path (a read failed part-way through a directory)
                    // or the root itself: the walk cannot vouch for any
                    // absence, so nothing may be deleted.
                    Some(Ok(_)) | None => ScanItem::Blind { path, message },
                    Some(Err(_)) => ScanItem::Problem { path, message },
                };
                if !emit(item) {
                    return;
                }
                continue;
            }
        };
        if entry.depth() == 0 {
            continue;
        }
        let ft = entry.file_type();
        let Ok(rel_path) = entry.path().strip_prefix(root) else {
            continue;
        };
        if let Some(why) = filter.why_excluded(rel_path, entry.file_name().as_bytes(), ft.is_dir())
        {
            let dir = ft.is_dir();
            if dir {
                it.skip_current_dir();
            }
            let rel = match keys::rel_key(rel_path, prefix) {
                Ok(r) => r,
                Err(_) => rel_path.to_string_lossy().into_owned(),
            };
            if !emit(ScanItem::Excluded { rel, dir, why }) {
                return;
            }
            continue;
        }
        let rel = match keys::rel_key(rel_path, prefix) {
            Ok(r) => r,
            Err(e) => {
                if ft.is_dir() {
                    it.skip_current_dir();
                }
                let what = if ft.is_dir() {
                    "directory skipped with its contents: "
                } else {
                    ""
                };
                if !emit(ScanItem::Problem {
                    path: entry.path().to_path_buf(),
                    message: format!("{what}{e}"),
                }) {
                    return;
                }
                continue;
            }
        };
        // A mount below the root, with --one-file-system: left out, and its
        // objects kept (its absence here proves nothing).
        let other_fs = (filter.one_file_system && (ft.is_dir() || ft.is_file()))
            .then(|| entry.metadata().ok())
            .flatten()
            .is_some_and(|m| filter.other_file_system(&m));
        if other_fs {
            if ft.is_dir() {
                it.skip_current_dir();
            }
            let item = ScanItem::Kept {
                rel,
                dir: ft.is_dir(),
                message: "on another file system; left out with its objects kept \
                          (--one-file-system)"
                    .into(),
                problem: false,
            };
            if !emit(item) {
                return;
            }
            continue;
        }
        let item = if ft.is_dir() {
            continue;
        } else if ft.is_symlink() {
            // Only reached when not following links (followed links report
            // their target's type).
            let to_dir = std::fs::metadata(entry.path())
                .map(|m| m.is_dir())
                .unwrap_or(false);
            ScanItem::Kept {
                rel,
                dir: to_dir,
                message: "symlink skipped (pass --follow-symlinks to upload what it points to)"
                    .into(),
                problem: false,
            }
        } else if ft.is_file() {
            match entry.metadata() {
                Ok(meta) => {
                    if let Some(message) = mtime_out_of_range(&meta) {
                        let path = entry.path().to_path_buf();
                        let skipped = false;
                        if !emit(ScanItem::Note {
                            path,
                            message,
                            skipped,
                        }) {
                            return;
                        }
                    }
                    ScanItem::File(LocalFile {
                        rel,
                        path: entry.path().to_path_buf(),
                        size: meta.len(),
                        mtime_ns: mtime_ns(&meta),
                    })
                }
                Err(e)
                    if e.io_error()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
                {
                    ScanItem::Note {
                        path: entry.path().to_path_buf(),
                        message: VANISHED.to_string(),
                        skipped: true,
                    }
                }
                Err(e) => ScanItem::Kept {
                    rel,
                    dir: false,
                    message: format!("cannot read metadata: {e}"),
                    problem: true,
                },
            }
        } else {
            ScanItem::Kept {
                rel,
                dir: false,
                message: format!(
                    "skipped: {} (only regular files are mirrored)",
                    kind_name(&ft)
                ),
                problem: false,
            }
        };
        if !emit(item) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FilterConfig {
        FilterConfig {
            exclude: vec!["*.log".into(), "cache/".into()],
            include_hidden: false,
            follow_symlinks: false,
            include_temp_files: false,
            one_file_system: false,
        }
    }

    fn files(root: &Path, filter: &Filter) -> Vec<String> {
        let mut out = Vec::new();
        walk(root, "", filter, false, |item| {
            if let ScanItem::File(f) = item {
                out.push(f.rel);
            }
            true
        });
        out
    }

    #[test]
    fn a_directory_gone_before_its_walk_is_a_note() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let filter = Filter::new(root, &cfg(), None).expect("filter");
        let mut items = Vec::new();
        walk_under(root, &root.join("gone"), "", &filter, false, |item| {
            items.push(item);
            true
        });
        match items.as_slice() {
            [ScanItem::Note { path, message, .. }] => {
                assert_eq!(path, &root.join("gone"));
                assert_eq!(message, VANISHED);
            }
            other => panic!("expected one note, got {other:?}"),
        }
    }

    #[test]
    fn walks_in_s3_byte_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for p in [
            "a.txt",
            "a/b.txt",
            "a0.txt",
            "a-b.txt",
            "B.txt",
            "日本.txt",
            "a b.txt",
        ] {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, p).expect("write");
        }
        let filter = Filter::new(root, &cfg(), None).expect("filter");
        let got = files(root, &filter);
        let mut want = got.clone();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(
            got,
            [
                "B.txt",
                "a b.txt",
                "a-b.txt",
                "a.txt",
                "a/b.txt",
                "a0.txt",
                "日本.txt"
            ]
        );
    }

    #[test]
    fn filters_hidden_and_excluded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for p in [
            ".hidden",
            ".git/config",
            "keep.txt",
            "x.log",
            "cache/c.txt",
            "sub/cache/d",
            "sub/e",
        ] {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, p).expect("write");
        }
        std::fs::write(root.join(IGNORE_FILE), "sub/e\n").expect("write");
        let filter = Filter::new(root, &cfg(), None).expect("filter");
        assert_eq!(files(root, &filter), ["keep.txt"]);
        assert!(filter.excludes_key(".git/config"));
        assert!(filter.excludes_key("sub/cache/d"));
        assert!(filter.excludes_key("a/b.log"));
        assert!(!filter.excludes_key("keep.txt"));
    }

    #[test]
    fn editor_temp_files_are_skipped_by_default() {
        for name in [
            "a.txt~",
            ".#a.txt",
            "#a.txt#",
            ".a.txt.swp",
            "a.swx",
            "4913",
            ".goutputstream-XYZ1",
            ".~lock.doc.odt#",
            "a.txt___jb_tmp___",
        ] {
            assert!(is_temp_name(name.as_bytes()), "{name}");
        }
        for name in ["a.txt", "#", "49130", "swp", "lock.odt", "~a"] {
            assert!(!is_temp_name(name.as_bytes()), "{name}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let filter = Filter::new(dir.path(), &cfg(), None).expect("filter");
        assert!(filter.excludes_key("sub/a.txt~"));
        assert!(!filter.excludes_key("sub~/a.txt"), "only file names");
        let all = Filter::new(
            dir.path(),
            &FilterConfig {
                include_temp_files: true,
                ..cfg()
            },
            None,
        )
        .expect("filter");
        assert!(!all.excludes_key("sub/a.txt~"));
    }
}
