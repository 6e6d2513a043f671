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

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::sync::mpsc;

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
/// returns false. `threads` read directories and stat their entries ahead
/// of the walk (1: all on the caller's thread); the items come in the same
/// order whatever their number.
pub fn walk(
    root: &Path,
    prefix: &str,
    filter: &Filter,
    follow_symlinks: bool,
    threads: usize,
    emit: impl FnMut(ScanItem) -> bool,
) {
    walk_under(root, root, prefix, filter, follow_symlinks, threads, emit)
}

/// Like [`walk`], but only the directory `start` inside `root` (which the
/// caller has checked is not excluded); names stay relative to `root`.
pub fn walk_under(
    root: &Path,
    start: &Path,
    prefix: &str,
    filter: &Filter,
    follow_symlinks: bool,
    threads: usize,
    emit: impl FnMut(ScanItem) -> bool,
) {
    let lister = Lister {
        root,
        prefix,
        filter,
        follow: follow_symlinks,
    };
    std::thread::scope(|scope| {
        let pool = Pool::start(scope, &lister, threads.saturating_sub(1));
        Walk {
            lister: &lister,
            pool,
            frames: Vec::new(),
            ahead: 0,
        }
        .run(start, emit);
    });
}

/// One directory's entries, sorted and classified, or why it could not be
/// read.
type Listing = std::io::Result<Vec<Step>>;

/// One entry of a directory listing, in key order.
enum Step {
    /// What the entry says, ready to emit (a file, a skip, a note).
    Emit(Vec<ScanItem>),
    /// A directory to walk into; `id` (device, inode) when links are
    /// followed, to find loops; `listing` when it is being read ahead.
    Dir {
        path: PathBuf,
        id: Option<(u64, u64)>,
        listing: Option<mpsc::Receiver<Listing>>,
    },
}

/// Reads one directory into its [`Step`]s: the part of the walk that may
/// run on any thread.
struct Lister<'a> {
    root: &'a Path,
    prefix: &'a str,
    filter: &'a Filter,
    follow: bool,
}

impl Lister<'_> {
    fn list(&self, dir: &Path) -> Listing {
        let mut steps = Vec::new();
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            match entry {
                Ok(e) => entries.push(self.resolve(e)),
                // The walk cannot vouch for any absence below: nothing may
                // be deleted.
                Err(e) => steps.push(Step::Emit(vec![ScanItem::Blind {
                    path: dir.to_path_buf(),
                    message: format!("cannot read: {e}"),
                }])),
            }
        }
        // Key order: name bytes, with a `/` after directories (a link
        // followed to a directory counts as one).
        entries.sort_by(|a, b| {
            let slash = |e: &Entry| if e.is_dir() { &b"/"[..] } else { &b""[..] };
            let an = a.name.as_bytes().iter().chain(slash(a));
            let bn = b.name.as_bytes().iter().chain(slash(b));
            an.cmp(bn)
        });
        steps.extend(entries.into_iter().filter_map(|e| self.classify(e)));
        Ok(steps)
    }

    /// An entry's type, following a link when asked.
    fn resolve(&self, e: std::fs::DirEntry) -> Entry {
        let path = e.path();
        let name = e.file_name();
        let kind = match e.file_type() {
            Ok(ft) if self.follow && ft.is_symlink() => match std::fs::metadata(&path) {
                Ok(m) => Kind::Followed(m),
                // The link is there (or was): it points to nothing.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Kind::Dangling,
                Err(err) => Kind::Broken(err),
            },
            Ok(ft) => Kind::Plain(ft),
            Err(err) => Kind::Broken(err),
        };
        Entry { name, path, kind }
    }

    /// What the walk does with one entry: `None` for what is neither
    /// reported nor walked.
    fn classify(&self, e: Entry) -> Option<Step> {
        let emit = |item| Some(Step::Emit(vec![item]));
        let ft = match &e.kind {
            Kind::Plain(ft) => *ft,
            Kind::Followed(m) => m.file_type(),
            Kind::Broken(err) => return emit(self.unreadable(&e.path, err, true)),
            Kind::Dangling => {
                let rel = e.path.strip_prefix(self.root).ok()?;
                return emit(match keys::rel_key(rel, self.prefix) {
                    Ok(rel) => ScanItem::Kept {
                        rel,
                        dir: false,
                        message: "symlink to nothing (what it points to does not exist); \
                                  skipped"
                            .into(),
                        problem: false,
                    },
                    Err(err) => ScanItem::Problem {
                        path: e.path,
                        message: err.to_string(),
                    },
                });
            }
        };
        let rel_path = e.path.strip_prefix(self.root).ok()?;
        if let Some(why) = self
            .filter
            .why_excluded(rel_path, e.name.as_bytes(), ft.is_dir())
        {
            let rel = keys::rel_key(rel_path, self.prefix)
                .unwrap_or_else(|_| rel_path.to_string_lossy().into_owned());
            let dir = ft.is_dir();
            return emit(ScanItem::Excluded { rel, dir, why });
        }
        let rel = match keys::rel_key(rel_path, self.prefix) {
            Ok(r) => r,
            Err(err) => {
                let what = if ft.is_dir() {
                    "directory skipped with its contents: "
                } else {
                    ""
                };
                return emit(ScanItem::Problem {
                    path: e.path,
                    message: format!("{what}{err}"),
                });
            }
        };
        // The entry's metadata: a followed link's target, or the entry
        // itself (read for files, and for directories with -x).
        let meta = || match &e.kind {
            Kind::Followed(m) => Ok(m.clone()),
            _ => std::fs::symlink_metadata(&e.path),
        };
        // A mount below the root, with --one-file-system: left out, and its
        // objects kept (its absence here proves nothing).
        if self.filter.one_file_system
            && (ft.is_dir() || ft.is_file())
            && meta().is_ok_and(|m| self.filter.other_file_system(&m))
        {
            return emit(ScanItem::Kept {
                rel,
                dir: ft.is_dir(),
                message: "on another file system; left out with its objects kept \
                          (--one-file-system)"
                    .into(),
                problem: false,
            });
        }
        if ft.is_dir() {
            let id = match &e.kind {
                Kind::Followed(m) => Some((m.dev(), m.ino())),
                _ if self.follow => meta().ok().map(|m| (m.dev(), m.ino())),
                _ => None,
            };
            return Some(Step::Dir {
                path: e.path,
                id,
                listing: None,
            });
        }
        if ft.is_symlink() {
            // Only reached when not following links (followed links report
            // their target's type).
            let to_dir = std::fs::metadata(&e.path).is_ok_and(|m| m.is_dir());
            return emit(ScanItem::Kept {
                rel,
                dir: to_dir,
                message: "symlink skipped (pass --follow-symlinks to upload what it points to)"
                    .into(),
                problem: false,
            });
        }
        if !ft.is_file() {
            return emit(ScanItem::Kept {
                rel,
                dir: false,
                message: format!(
                    "skipped: {} (only regular files are mirrored)",
                    kind_name(&ft)
                ),
                problem: false,
            });
        }
        match meta() {
            Ok(meta) => {
                let mut items = Vec::new();
                if let Some(message) = mtime_out_of_range(&meta) {
                    let path = e.path.clone();
                    let skipped = false;
                    items.push(ScanItem::Note {
                        path,
                        message,
                        skipped,
                    });
                }
                items.push(ScanItem::File(LocalFile {
                    rel,
                    path: e.path,
                    size: meta.len(),
                    mtime_ns: mtime_ns(&meta),
                }));
                Some(Step::Emit(items))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => emit(ScanItem::Note {
                path: e.path,
                message: VANISHED.to_string(),
                skipped: true,
            }),
            Err(err) => emit(ScanItem::Kept {
                rel,
                dir: false,
                message: format!("cannot read metadata: {err}"),
                problem: true,
            }),
        }
    }

    /// The item for a path that cannot be read: gone while the walk went
    /// by, or an error that keeps its objects (`below`: the root's own
    /// vanishing is no note, as nothing would be mirrored at all).
    fn unreadable(&self, path: &Path, err: &std::io::Error, below: bool) -> ScanItem {
        if below && err.kind() == std::io::ErrorKind::NotFound {
            return ScanItem::Note {
                path: path.to_path_buf(),
                message: VANISHED.to_string(),
                skipped: true,
            };
        }
        let message = format!("cannot read: {err}");
        match path
            .strip_prefix(self.root)
            .ok()
            .map(|r| keys::rel_key(r, self.prefix))
        {
            // An error while reading an entry's metadata could be about a
            // directory: protect both forms.
            Some(Ok(rel)) if !rel.is_empty() => ScanItem::Kept {
                rel,
                dir: true,
                message,
                problem: true,
            },
            // The root itself: the walk cannot vouch for any absence, so
            // nothing may be deleted.
            Some(Ok(_)) | None => ScanItem::Blind {
                path: path.to_path_buf(),
                message,
            },
            Some(Err(_)) => ScanItem::Problem {
                path: path.to_path_buf(),
                message,
            },
        }
    }
}

/// A directory entry with its type known.
struct Entry {
    name: std::ffi::OsString,
    path: PathBuf,
    kind: Kind,
}

enum Kind {
    /// Not a link, or a link not followed.
    Plain(std::fs::FileType),
    /// A link followed to what it points to.
    Followed(std::fs::Metadata),
    /// A link followed to nothing.
    Dangling,
    /// An entry gone before its type was read, or a link whose target
    /// cannot be read.
    Broken(std::io::Error),
}

impl Entry {
    fn is_dir(&self) -> bool {
        match &self.kind {
            Kind::Plain(ft) => ft.is_dir(),
            Kind::Followed(m) => m.is_dir(),
            Kind::Broken(_) | Kind::Dangling => false,
        }
    }
}

/// Threads that read directories ahead of the walk.
struct Pool {
    jobs: Option<mpsc::Sender<(PathBuf, mpsc::SyncSender<Listing>)>>,
    /// Directories that may be read ahead at once: enough to keep every
    /// thread busy, few enough to bound the memory the listings take.
    most: usize,
}

impl Pool {
    fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        lister: &'scope Lister<'scope>,
        threads: usize,
    ) -> Pool {
        if threads == 0 {
            return Pool {
                jobs: None,
                most: 0,
            };
        }
        let (tx, rx) = mpsc::channel::<(PathBuf, mpsc::SyncSender<Listing>)>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for _ in 0..threads {
            let rx = rx.clone();
            scope.spawn(move || loop {
                // The lock is held only to take a job; a poisoned one
                // means another reader panicked: stop reading ahead.
                let job = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((dir, reply)) = job else { return };
                // The walk may have stopped and dropped the receiver.
                let _ = reply.send(lister.list(&dir));
            });
        }
        Pool {
            jobs: Some(tx),
            most: threads * 8,
        }
    }

    /// Asks for `dir` to be read; `None` when no thread can.
    fn read(&self, dir: &Path) -> Option<mpsc::Receiver<Listing>> {
        let (reply, listing) = mpsc::sync_channel(1);
        self.jobs.as_ref()?.send((dir.to_path_buf(), reply)).ok()?;
        Some(listing)
    }
}

/// The ordered, depth-first part of the walk, on the caller's thread.
struct Walk<'a> {
    lister: &'a Lister<'a>,
    pool: Pool,
    /// The directories being walked, outermost first.
    frames: Vec<Frame>,
    /// Listings asked for and not yet taken.
    ahead: usize,
}

struct Frame {
    steps: Vec<Step>,
    /// The next step to take.
    next: usize,
    /// Steps before this one were looked at for reading ahead.
    looked: usize,
    /// The (device, inode) of this directory, when links are followed.
    id: Option<(u64, u64)>,
}

impl Frame {
    fn take(&mut self) -> Option<Step> {
        let step = self.steps.get_mut(self.next)?;
        self.next += 1;
        Some(std::mem::replace(step, Step::Emit(Vec::new())))
    }
}

impl Walk<'_> {
    fn run(&mut self, start: &Path, mut emit: impl FnMut(ScanItem) -> bool) {
        let lister = self.lister;
        let below = start != lister.root;
        let id = lister
            .follow
            .then(|| std::fs::metadata(start).ok())
            .flatten()
            .map(|m| (m.dev(), m.ino()));
        match lister.list(start) {
            Ok(steps) => self.enter(steps, id),
            Err(err) => {
                emit(lister.unreadable(start, &err, below));
                return;
            }
        }
        loop {
            let Some(frame) = self.frames.last_mut() else {
                return;
            };
            let Some(step) = frame.take() else {
                self.frames.pop();
                continue;
            };
            match step {
                Step::Emit(items) => {
                    for item in items {
                        if !emit(item) {
                            return;
                        }
                    }
                }
                Step::Dir { path, id, listing } => {
                    if listing.is_some() {
                        self.ahead -= 1;
                    }
                    if id.is_some() && self.frames.iter().any(|f| f.id == id) {
                        let rel = path
                            .strip_prefix(lister.root)
                            .ok()
                            .and_then(|r| keys::rel_key(r, lister.prefix).ok());
                        let message = "symlink loop: the link points to one of its own \
                                       parent directories; skipped"
                            .to_string();
                        let item = match rel {
                            Some(rel) => ScanItem::Kept {
                                rel,
                                dir: true,
                                message,
                                problem: true,
                            },
                            None => ScanItem::Problem { path, message },
                        };
                        if !emit(item) {
                            return;
                        }
                        continue;
                    }
                    // Read ahead, or now when it was not (or its reader
                    // is gone).
                    let read = listing
                        .and_then(|l| l.recv().ok())
                        .unwrap_or_else(|| lister.list(&path));
                    match read {
                        Ok(steps) => self.enter(steps, id),
                        Err(err) => {
                            if !emit(lister.unreadable(&path, &err, true)) {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Walks into a directory, and asks for the next directories the walk
    /// will reach to be read ahead: the innermost first, as the walk goes
    /// depth first.
    fn enter(&mut self, steps: Vec<Step>, id: Option<(u64, u64)>) {
        self.frames.push(Frame {
            steps,
            next: 0,
            looked: 0,
            id,
        });
        for frame in self.frames.iter_mut().rev() {
            frame.looked = frame.looked.max(frame.next);
            while frame.looked < frame.steps.len() {
                if self.ahead >= self.pool.most {
                    return;
                }
                if let Step::Dir {
                    path,
                    listing: listing @ None,
                    ..
                } = &mut frame.steps[frame.looked]
                {
                    *listing = self.pool.read(path);
                    if listing.is_none() {
                        return;
                    }
                    self.ahead += 1;
                }
                frame.looked += 1;
            }
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
            walk_threads: 4,
        }
    }

    fn files(root: &Path, filter: &Filter) -> Vec<String> {
        let mut out = Vec::new();
        walk(root, "", filter, false, 4, |item| {
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
        walk_under(root, &root.join("gone"), "", &filter, false, 4, |item| {
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

    /// A tree built to trip an ordered parallel walk: names that sort
    /// around `/`, directories wider and deeper than the read-ahead,
    /// links (a loop, a dangling one), a FIFO, excluded and hidden parts,
    /// a name too long for a key, and a date beyond 2262.
    fn hostile_tree(root: &Path) {
        let mut paths = Vec::new();
        for top in ["a", "a-b", "a.b", "a0", "a b", "日本", "Z", "z~"] {
            paths.push(format!("{top}.txt"));
            paths.push(format!("{top}/x"));
            paths.push(format!("{top}/x.txt"));
            for i in 0..40 {
                paths.push(format!("{top}/d{i}/f"));
                paths.push(format!("{top}/d{i}/g/h{}", i % 3));
            }
        }
        let mut deep = String::from("deep");
        for i in 0..30 {
            deep.push_str(&format!("/{i}"));
            paths.push(format!("{deep}/f{i}"));
        }
        paths.extend(
            [".hidden/x", "cache/x", "a/b.log", "keep/.s/x", "e/x"]
                .iter()
                .map(|s| s.to_string()),
        );
        // Past S3's 1,024 bytes for a key: a problem, not a file.
        let long = ["n", "m", "o", "p", "q"].map(|c| c.repeat(250)).join("/");
        paths.push(format!("{long}/f"));
        for p in &paths {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, p).expect("write");
        }
        std::os::unix::fs::symlink(root.join("a"), root.join("a/d1/up")).expect("loop");
        std::os::unix::fs::symlink("a0", root.join("link")).expect("link");
        std::os::unix::fs::symlink("nowhere", root.join("dangling")).expect("dangling");
        let status = std::process::Command::new("mkfifo")
            .arg(root.join("a/fifo"))
            .status()
            .expect("mkfifo");
        assert!(status.success());
        let late = std::fs::File::options()
            .write(true)
            .open(root.join("a.txt"))
            .expect("open");
        late.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(10_413_792_000))
            .expect("set mtime");
    }

    fn stream(root: &Path, follow: bool, threads: usize) -> Vec<String> {
        let filter = Filter::new(root, &cfg(), None).expect("filter");
        let mut out = Vec::new();
        walk(root, "pre/", &filter, follow, threads, |item| {
            out.push(format!("{item:?}"));
            true
        });
        out
    }

    #[test]
    fn parallel_walks_give_the_serial_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        hostile_tree(root);
        for follow in [false, true] {
            let serial = stream(root, follow, 1);
            for threads in [2, 3, 8, 64] {
                assert_eq!(stream(root, follow, threads), serial, "{threads} threads");
            }
            // The files in it are every file the filters let through, in
            // key order, as a plain recursive listing finds them.
            let filter = Filter::new(root, &cfg(), None).expect("filter");
            let mut files = Vec::new();
            walk(root, "pre/", &filter, follow, 8, |item| {
                if let ScanItem::File(f) = item {
                    files.push(f.rel);
                }
                true
            });
            let mut want: Vec<String> = walkdir::WalkDir::new(root)
                .follow_links(follow)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .map(|e| {
                    let rel = e.path().strip_prefix(root).expect("inside");
                    rel.to_str().expect("utf-8").to_string()
                })
                .filter(|rel| !filter.excludes_key(rel) && rel.len() < 1000)
                .collect();
            want.sort();
            assert_eq!(files, want, "follow {follow}");
            let text = serial.join("\n");
            let link = if follow {
                "symlink loop"
            } else {
                "symlink skipped"
            };
            assert!(text.contains(link), "{text}");
            assert!(text.contains("after 2262"), "{text}");
            assert!(text.contains("a FIFO"), "{text}");
            assert!(text.contains("Problem"), "{text}");
            if follow {
                assert!(text.contains("symlink to nothing"), "{text}");
            }
        }
    }

    #[test]
    fn a_walk_stopped_early_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        hostile_tree(root);
        let filter = Filter::new(root, &cfg(), None).expect("filter");
        let mut seen = 0;
        walk(root, "", &filter, false, 8, |_| {
            seen += 1;
            seen < 5
        });
        assert_eq!(seen, 5);
    }
}
