//! `s3ma restore`: the other half of a mirror. Every object under the
//! prefix (or, with `--at`, the version of each key that was current
//! then) is brought back into a directory:
//!
//! - a key becomes a path by the upload's rules read backwards; a key that
//!   could lead outside the directory (`..`, an empty or `.` segment, a
//!   directory on the way that is a symbolic link) is refused by name;
//! - each file is written to a temporary name beside it and renamed into
//!   place only once its MD5 is that of the object (`md5chksum`, or a
//!   plain ETag); then its mtime (from `mtime`, else the object's date)
//!   and, when stored, its mode are set;
//! - a file that already matches (size and mtime, or MD5 with
//!   `--checksum`) is skipped, so an interrupted restore run again goes on
//!   where it stopped;
//! - large objects come in parallel ranged GETs, pinned to the object
//!   with If-Match;
//! - objects in archive storage classes are listed once, with what to do.

use std::collections::HashSet;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use md5::{Digest, Md5};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::Restore;
use crate::keys::Location;
use crate::plan::RemoteFacts;
use crate::report::{human_size, printable, Reporter};
use crate::store::{Blame, HeadInfo, ObjectInfo, Store, StoreError};
use crate::Exit;

/// A downloaded temporary file: the MD5 of its bytes, and what the server
/// said of the object (its MD5, mtime, mode and date).
struct Fetched {
    md5: [u8; 16],
    facts: RemoteFacts,
    mode: Option<u32>,
    last_modified: Option<aws_smithy_types::DateTime>,
}

/// One object to bring back: as listed, and which version.
#[derive(Debug, Clone)]
pub struct Item {
    pub object: ObjectInfo,
    /// `None`: the current object.
    pub version_id: Option<String>,
}

/// The objects under `loc` now, in key order.
pub async fn tree_now(store: &Store, loc: &Location) -> Result<Vec<Item>, StoreError> {
    let mut items = Vec::new();
    let mut lister = store.lister(&loc.bucket, &loc.prefix, None).page_size(1000);
    while let Some(page) = lister.next_page().await? {
        items.extend(page.objects.into_iter().map(|object| Item {
            object,
            version_id: None,
        }));
    }
    Ok(items)
}

/// The objects under `loc` as they were at `at`: for each key, its newest
/// version not newer than `at`, unless that is a delete marker. The
/// bucket must have (or have had) versioning.
pub async fn tree_at(store: &Store, loc: &Location, at: SystemTime) -> Result<Vec<Item>> {
    let status = match store.versioning(&loc.bucket).await {
        Ok(s) => s,
        Err(e) if e.to_string().contains("NotImplemented") => bail!(
            "{} does not implement versioning ({e}): --at needs a bucket with versioning; \
             without --at, s3ma restores the objects there now",
            store.endpoint()
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot read the versioning of s3://{}", loc.bucket)))
        }
    };
    let never = |bucket: &str| {
        anyhow!(
            "s3://{bucket} has no versioning, so it holds no earlier versions to go back to: \
             --at needs a bucket with versioning (aws s3api put-bucket-versioning --bucket \
             {bucket} --versioning-configuration Status=Enabled; versions are kept from then \
             on); without --at, s3ma restores the objects there now"
        )
    };
    if status == Some(None) {
        return Err(never(&loc.bucket));
    }
    let at = aws_smithy_types::DateTime::from(at);
    let not_after = |t: &Option<aws_smithy_types::DateTime>| t.is_some_and(|t| t <= at);
    let mut items = Vec::new();
    // The key whose version has been chosen (or found deleted) already.
    let mut settled: Option<String> = None;
    // Any version made under versioning (not the "null" of an object
    // written without it).
    let mut versioned = false;
    store
        .versions(&loc.bucket, &loc.prefix, |page| {
            for v in page {
                versioned |= v.version_id.as_deref().is_some_and(|id| id != "null");
                if settled.as_deref() == Some(v.object.key.as_str())
                    || !not_after(&v.object.last_modified)
                {
                    continue;
                }
                settled = Some(v.object.key.clone());
                if !v.delete_marker {
                    items.push(Item {
                        object: v.object,
                        version_id: v.version_id,
                    });
                }
            }
        })
        .await
        .with_context(|| format!("cannot list the versions under {loc}"))?;
    // The status could not be read: the versions tell.
    if status.is_none() && !versioned {
        return Err(never(&loc.bucket));
    }
    Ok(items)
}

/// The path below the directory a key under `loc` restores to, or why it
/// cannot be one.
pub fn rel_path<'a>(loc: &Location, key: &'a str) -> Result<&'a str, String> {
    let rel = loc
        .rel_of(key)
        .ok_or_else(|| "the key is not under the prefix".to_string())?;
    if rel.is_empty() {
        return Err("the key is the prefix itself: it names no file".into());
    }
    if rel.starts_with('/') {
        return Err(if loc.prefix.is_empty() {
            "the key would be an absolute path (it starts with /)".into()
        } else {
            "the key has an empty segment (// after the prefix), which no path can".into()
        });
    }
    if rel.ends_with('/') {
        return Err(
            "the key ends with / (a folder marker) but holds bytes, which no file name can".into(),
        );
    }
    if rel.contains('\0') {
        return Err("the key holds a NUL character, which no file name can".into());
    }
    for part in rel.split('/') {
        match part {
            "" => return Err("the key has an empty segment (//), which no path can".into()),
            "." | ".." => {
                return Err(format!(
                    "the key has a '{part}' segment, which would lead out of its directory"
                ))
            }
            p if p.len() > 255 => {
                return Err("a segment of the key is longer than a file name can be".into())
            }
            _ => {}
        }
    }
    Ok(rel)
}

/// What is at a restore's target path now.
enum Local {
    Nothing,
    File { size: u64, mtime_ns: i64 },
}

/// Checks that every directory between `dir` and `rel` is a directory (no
/// symbolic link that could lead elsewhere), making the missing ones
/// unless `dry_run`; returns the target path and what is there.
fn prepare(dir: &Path, rel: &str, dry_run: bool) -> Result<(PathBuf, Local), String> {
    let mut path = dir.to_path_buf();
    let mut parts = rel.split('/').peekable();
    while let Some(part) = parts.next() {
        path.push(part);
        let last = parts.peek().is_none();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symbolic link; s3ma does not write through it (it could lead out \
                     of {}): move it away to restore this file",
                    path.display(),
                    dir.display()
                ))
            }
            Ok(m) if last && m.is_file() => {
                return Ok((
                    path,
                    Local::File {
                        size: m.len(),
                        mtime_ns: crate::scan::mtime_ns(&m),
                    },
                ))
            }
            Ok(m) if last => {
                let what = if m.is_dir() {
                    "a directory"
                } else {
                    "not a regular file"
                };
                return Err(format!(
                    "{} is {what}, where the object is a file: move it away to restore it",
                    path.display()
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{} is a file, where the key needs a directory",
                    path.display()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if last {
                    return Ok((path, Local::Nothing));
                }
                if dry_run {
                    // Nothing below a directory that does not exist.
                    path.extend(parts);
                    return Ok((path, Local::Nothing));
                }
                match std::fs::create_dir(&path) {
                    Ok(()) => {}
                    // Made meanwhile by another file's task: look again.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                            return Err(format!(
                                "{} appeared meanwhile and is not a directory",
                                path.display()
                            ));
                        }
                    }
                    Err(e) => return Err(format!("cannot make {}: {e}", path.display())),
                }
            }
            Err(e) => return Err(format!("cannot look at {}: {e}", path.display())),
        }
    }
    unreachable!("a key has at least one segment")
}

/// How one object's restore ended.
enum Done {
    Downloaded {
        size: u64,
        elapsed: Duration,
        reason: &'static str,
        /// Nothing told the object's MD5: only its size was checked.
        unchecked: bool,
    },
    Same(&'static str),
    /// In an archive class without a readable copy.
    Archived,
    /// Deleted on the server after the listing.
    Vanished,
    Failed(String),
    /// The server failed, or the configuration is wrong.
    Broken(StoreError),
}

fn store_failed(what: &str, e: StoreError) -> Done {
    if matches!(e, StoreError::NotFound) {
        return Done::Vanished;
    }
    match e.blame() {
        Blame::Request => Done::Failed(format!("{what}: {e}")),
        Blame::Server | Blame::Fatal => Done::Broken(e),
    }
}

/// What a restore needs besides the object.
struct Job {
    store: Store,
    bucket: String,
    item: Item,
    path: PathBuf,
    local: Local,
    checksum: bool,
    dry_run: bool,
    threshold: u64,
    chunk: u64,
    requests: Arc<Semaphore>,
}

/// How the names of restore's temporary files begin.
const TEMP_PREFIX: &str = ".s3ma-restore-";

/// The temporary name a file is written to, beside it: hidden, so a sync
/// or watch of the directory leaves it out, and the same on every run, so
/// one left by a killed run is written over.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or_default();
    let digest: [u8; 16] = Md5::digest(name).into();
    path.with_file_name(format!("{TEMP_PREFIX}{}", hex::encode(&digest[..8])))
}

/// Makes the temporary file afresh: whatever is at its name (one left by
/// a killed run, or a link someone put there) is removed first, and the
/// file is created only if nothing is there, so no link is followed.
fn create_temp(temp: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::remove_file(temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(temp)
}

/// The object's mtime: its `mtime` metadata, else its date on the server.
fn object_mtime(
    facts: &RemoteFacts,
    last_modified: Option<&aws_smithy_types::DateTime>,
) -> Option<i64> {
    facts
        .mtime
        .map(|(t, _)| t)
        .or_else(|| last_modified.map(|d| d.secs() * 1_000_000_000 + i64::from(d.subsec_nanos())))
}

/// Sets a restored file's mtime and, when it was stored, its mode.
fn finish_file(path: &Path, mtime_ns: Option<i64>, mode: Option<u32>) -> std::io::Result<()> {
    if let Some(ns) = mtime_ns {
        let t = if ns >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
        };
        std::fs::File::options()
            .write(true)
            .open(path)?
            .set_modified(t)?;
    }
    if let Some(mode) = mode {
        // Not setuid or setgid: whoever can write the bucket would choose
        // what runs with the restoring user's rights.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o1777))?;
    }
    Ok(())
}

/// `mode` metadata (rclone's octal, `0100644`).
fn stored_mode(meta: &std::collections::HashMap<String, String>) -> Option<u32> {
    meta.get("mode")
        .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
}

fn md5_of_file(path: &Path) -> std::io::Result<[u8; 16]> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(md5.finalize().into());
        }
        md5.update(&buf[..n]);
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("worker failed: {e}"))
}

impl Job {
    fn key(&self) -> &str {
        &self.item.object.key
    }

    /// A HEAD of the object (its version), with a request permit.
    async fn head(&self) -> Result<HeadInfo, Done> {
        let _permit = self.requests.acquire().await;
        self.store
            .head_version(&self.bucket, self.key(), self.item.version_id.as_deref())
            .await
            .map_err(|e| store_failed("cannot read the object", e))
    }

    /// The file here has the object's bytes: it gets the object's mtime
    /// and mode (so the next run without --checksum agrees) and stays.
    async fn keep_local(&self, mtime: Option<i64>, mode: Option<u32>, why: &'static str) -> Done {
        if self.dry_run {
            return Done::Same(why);
        }
        let p = self.path.clone();
        match blocking(move || finish_file(&p, mtime, mode)).await {
            Ok(Ok(())) => Done::Same(why),
            Ok(Err(e)) => Done::Failed(format!(
                "cannot set the mtime of {}: {e}",
                self.path.display()
            )),
            Err(e) => Done::Failed(e),
        }
    }

    fn write_failed(&self, e: std::io::Error) -> Done {
        Done::Failed(format!(
            "cannot write {} (through a temporary file beside it): {e}",
            self.path.display()
        ))
    }

    async fn run(self) -> Done {
        let start = Instant::now();
        let o = &self.item.object;
        let mut head = None;
        let mut compare_local = false;
        let reason = match self.local {
            Local::Nothing => "new",
            Local::File { size, mtime_ns } if size == o.size => {
                let h = match self.head().await {
                    Ok(h) => h,
                    Err(done) => return done,
                };
                let facts = self.store.facts(&h);
                if !self.checksum {
                    let remote = object_mtime(&facts, h.last_modified.as_ref());
                    let same = match facts.mtime {
                        Some(_) => facts.same_mtime(mtime_ns),
                        None => {
                            remote.is_some_and(|t| t / 1_000_000_000 == mtime_ns / 1_000_000_000)
                        }
                    };
                    if same {
                        return Done::Same("same size and mtime");
                    }
                } else if let Some(want) = facts.md5 {
                    let path = self.path.clone();
                    match blocking(move || md5_of_file(&path)).await {
                        Ok(Ok(m)) if m == want => {
                            let mtime = object_mtime(&facts, h.last_modified.as_ref());
                            return self
                                .keep_local(mtime, stored_mode(&h.metadata), "same MD5")
                                .await;
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            return Done::Failed(format!(
                                "cannot read {}: {e}",
                                self.path.display()
                            ))
                        }
                        Err(e) => return Done::Failed(e),
                    }
                } else {
                    // --checksum, and no MD5 of the object to compare:
                    // its bytes are downloaded and compared with the file.
                    compare_local = true;
                }
                head = Some(h);
                "changed"
            }
            Local::File { .. } => "changed",
        };
        if o.archived {
            let h = match head.take() {
                Some(h) => h,
                None => match self.head().await {
                    Ok(h) => h,
                    Err(done) => return done,
                },
            };
            if !h
                .restore
                .as_deref()
                .is_some_and(|r| r.contains("ongoing-request=\"false\""))
            {
                return Done::Archived;
            }
            head = Some(h);
        }
        if self.dry_run {
            return Done::Downloaded {
                size: o.size,
                elapsed: start.elapsed(),
                reason,
                unchecked: false,
            };
        }
        let temp = temp_path(&self.path);
        let fetched = if o.size >= self.threshold {
            self.fetch_ranges(&temp, head).await
        } else {
            self.fetch_whole(&temp).await
        };
        let Fetched {
            md5,
            facts,
            mode,
            last_modified,
        } = match fetched {
            Ok(f) => f,
            Err(done) => {
                let _ = std::fs::remove_file(&temp);
                return done;
            }
        };
        let checked = match facts.md5 {
            Some(want) if want != md5 => Err(format!(
                "the downloaded bytes have the MD5 {}, the object says {}: not restored (run \
                 again; if it stays so, the object's md5chksum metadata is wrong)",
                hex::encode(md5),
                hex::encode(want)
            )),
            _ => Ok(()),
        };
        let mtime = object_mtime(&facts, last_modified.as_ref());
        if compare_local && checked.is_ok() {
            let p = self.path.clone();
            if let Ok(Ok(local)) = blocking(move || md5_of_file(&p)).await {
                if local == md5 {
                    let _ = std::fs::remove_file(&temp);
                    return self
                        .keep_local(mtime, mode, "same bytes (downloaded to compare: no MD5)")
                        .await;
                }
            }
        }
        let (t, p) = (temp.clone(), self.path.clone());
        let placed = match checked {
            Ok(()) => blocking(move || {
                finish_file(&t, mtime, mode)
                    .and_then(|()| std::fs::rename(&t, &p))
                    .map_err(|e| format!("cannot put {} in place: {e}", p.display()))
            })
            .await
            .and_then(|r| r),
            Err(e) => Err(e),
        };
        match placed {
            Ok(()) => Done::Downloaded {
                size: o.size,
                elapsed: start.elapsed(),
                reason,
                unchecked: facts.md5.is_none(),
            },
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Done::Failed(e)
            }
        }
    }

    /// One GET, written to `temp` and hashed as it comes.
    async fn fetch_whole(&self, temp: &Path) -> Result<Fetched, Done> {
        let _permit = self.requests.acquire().await;
        let version = self.item.version_id.as_deref();
        let mut d = match self
            .store
            .get(&self.bucket, self.key(), version, None, None)
            .await
        {
            Ok(d) => d,
            Err(e) => return Err(store_failed("cannot download", e)),
        };
        let mut file = create_temp(temp).map_err(|e| self.write_failed(e))?;
        let mut md5 = Md5::new();
        let mut got = 0u64;
        loop {
            match d.body.try_next().await {
                Ok(Some(chunk)) => {
                    use std::io::Write;
                    md5.update(&chunk);
                    got += chunk.len() as u64;
                    file.write_all(&chunk).map_err(|e| {
                        Done::Failed(format!("cannot write {}: {e}", temp.display()))
                    })?;
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Done::Failed(format!(
                        "the download broke off ({e}): not restored (run again)"
                    )))
                }
            }
        }
        if got != d.size {
            return Err(Done::Failed(format!(
                "{} came of {} announced: not restored (run again)",
                human_size(got),
                human_size(d.size)
            )));
        }
        let facts = self.store.facts_of(d.etag.as_deref(), &d.metadata);
        Ok(Fetched {
            md5: md5.finalize().into(),
            facts,
            mode: stored_mode(&d.metadata),
            last_modified: d.last_modified,
        })
    }

    /// Parallel ranged GETs, each written at its offset, all pinned to the
    /// object's ETag; then the file is hashed.
    async fn fetch_ranges(&self, temp: &Path, head: Option<HeadInfo>) -> Result<Fetched, Done> {
        let version = self.item.version_id.clone();
        let head = match head {
            Some(h) => h,
            None => self.head().await?,
        };
        let size = head.size;
        let file = create_temp(temp)
            .and_then(|f| f.set_len(size).map(|()| f))
            .map_err(|e| self.write_failed(e))?;
        let file = Arc::new(file);
        let chunk = self.chunk.max(1);
        let mut set: JoinSet<Result<(), Done>> = JoinSet::new();
        let mut offset = 0u64;
        while offset < size {
            let len = chunk.min(size - offset);
            let (store, bucket, key) = (
                self.store.clone(),
                self.bucket.clone(),
                self.key().to_string(),
            );
            let (version, etag, file, requests) = (
                version.clone(),
                head.etag.clone(),
                file.clone(),
                self.requests.clone(),
            );
            let at = offset;
            set.spawn(async move {
                let _permit = requests.acquire_owned().await;
                let mut d = store
                    .get(
                        &bucket,
                        &key,
                        version.as_deref(),
                        Some((at, at + len - 1)),
                        etag.as_deref(),
                    )
                    .await
                    .map_err(|e| match e {
                        StoreError::PreconditionFailed => Done::Failed(
                            "the object was replaced while it was downloaded: run again".into(),
                        ),
                        e => store_failed("cannot download", e),
                    })?;
                let mut pos = at;
                loop {
                    match d.body.try_next().await {
                        Ok(Some(bytes)) => {
                            file.write_all_at(&bytes, pos)
                                .map_err(|e| Done::Failed(format!("cannot write: {e}")))?;
                            pos += bytes.len() as u64;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            return Err(Done::Failed(format!(
                                "the download of {key} broke off ({e}): not restored (run again)"
                            )))
                        }
                    }
                }
                if pos != at + len {
                    return Err(Done::Failed(format!(
                        "a range of {} came short: not restored (run again)",
                        human_size(len)
                    )));
                }
                Ok(())
            });
            offset += len;
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(done)) => return Err(done),
                Err(e) => return Err(Done::Failed(format!("a range download failed: {e}"))),
            }
        }
        let t = temp.to_path_buf();
        let md5 = match blocking(move || md5_of_file(&t)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(Done::Failed(format!("cannot read {}: {e}", temp.display()))),
            Err(e) => return Err(Done::Failed(e)),
        };
        let facts = self.store.facts(&head);
        Ok(Fetched {
            md5,
            facts,
            mode: stored_mode(&head.metadata),
            last_modified: head.last_modified,
        })
    }
}

/// Local files under `dir` that have no object (what sync would mirror:
/// hidden, temporary and excluded files are left alone), in key order.
fn unmatched(cfg: &Restore, wanted: &HashSet<String>, rep: &Reporter) -> Result<Vec<PathBuf>> {
    if !cfg.dir.exists() {
        // A dry run into a directory still to be made.
        return Ok(Vec::new());
    }
    let filter = crate::scan::Filter::new(&cfg.dir, &cfg.filter, None)?;
    let mut out = Vec::new();
    let mut blind = None;
    crate::scan::walk(
        &cfg.dir,
        "",
        &filter,
        false,
        cfg.filter.walk_threads,
        |item| {
            match item {
                crate::scan::ScanItem::File(f) if !wanted.contains(&f.rel) => out.push(f.path),
                crate::scan::ScanItem::Kept {
                    rel,
                    message,
                    problem: true,
                    ..
                } => rep.failed(
                    &cfg.dir.join(rel).display().to_string(),
                    &format!("{message}; nothing under it is deleted"),
                ),
                crate::scan::ScanItem::Blind { path, message } => {
                    blind = Some(format!("{}: {message}", path.display()));
                    return false;
                }
                // A temporary file a killed restore left: under the lock
                // on the directory, no other restore is writing it.
                crate::scan::ScanItem::Excluded {
                    rel, dir: false, ..
                } if !cfg.dry_run
                    && rel
                        .rsplit('/')
                        .next()
                        .is_some_and(|n| n.starts_with(TEMP_PREFIX)) =>
                {
                    let _ = std::fs::remove_file(cfg.dir.join(&rel));
                }
                _ => {}
            }
            true
        },
    );
    if let Some(b) = blind {
        bail!(
            "cannot read all of {} ({b}): nothing deleted",
            cfg.dir.display()
        );
    }
    Ok(out)
}

/// Removes `path`'s parent directories up to `root` while they are empty.
fn prune_dirs(root: &Path, path: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            return;
        }
        dir = d.parent();
    }
}

/// Restores `cfg.from` into `cfg.dir`; an error is one that ended the run.
pub async fn restore(cfg: &Restore, rep: &Arc<Reporter>, stop: &crate::sync::Stop) -> Result<Exit> {
    rep.start_clock();
    let store = Store::connect(&cfg.conn)
        .await?
        .with_sse(cfg.transfer.sse.clone());
    let loc = &cfg.from;
    let items = match cfg.at {
        None => tree_now(&store, loc)
            .await
            .with_context(|| format!("cannot list {loc}"))?,
        Some(at) => tree_at(&store, loc, at).await?,
    };
    let when = cfg
        .at
        .map(|t| format!(" at {}", crate::report::utc(t)))
        .unwrap_or_default();
    if items.is_empty() && cfg.delete {
        bail!(
            "{loc} holds no objects{when}: nothing to restore, and --delete deletes nothing \
             (is the prefix right?)"
        );
    }
    if items.is_empty() {
        rep.warn(&format!(
            "{loc} holds no objects{when}: nothing to restore (is the prefix right?)"
        ));
    }
    // One restore into a directory at a time: two would write the same
    // temporary files.
    let _lock = if cfg.dry_run {
        None
    } else {
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("cannot make {}", cfg.dir.display()))?;
        let dir = std::fs::File::open(&cfg.dir)
            .with_context(|| format!("cannot open {}", cfg.dir.display()))?;
        match dir.try_lock() {
            Ok(()) => Some(dir),
            Err(std::fs::TryLockError::WouldBlock) => {
                rep.fatal(&format!(
                    "another s3ma restore into {} is running; wait for it to finish",
                    cfg.dir.display()
                ));
                return Ok(Exit::Busy);
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", cfg.dir.display()))
            }
        }
    };
    let requests = Arc::new(Semaphore::new(cfg.transfer.concurrency.max(1)));
    // Jobs waiting to start, beside the requests in flight.
    let started = Arc::new(Semaphore::new(cfg.transfer.concurrency.max(1) * 2));
    let mut wanted = HashSet::with_capacity(items.len());
    let mut set: JoinSet<(String, String, Done)> = JoinSet::new();
    let mut archived = Vec::new();
    let mut broken: Option<StoreError> = None;
    let on_done = |key: String,
                   path: String,
                   done: Done,
                   archived: &mut Vec<String>,
                   broken: &mut Option<StoreError>| match done {
        Done::Downloaded {
            size,
            elapsed,
            reason,
            unchecked,
        } => {
            rep.downloaded(&key, &path, size, elapsed, cfg.dry_run, reason);
            if unchecked {
                rep.remark(
                    &key,
                    "no MD5 to check it against (a multipart object without md5chksum \
                     metadata): only its size was checked",
                );
            }
        }
        Done::Same(why) => rep.skipped(&key, why),
        Done::Archived => archived.push(key),
        // The tree of another time misses a file: a failure. The present
        // one simply has the object no more.
        Done::Vanished if cfg.at.is_some() => rep.failed(
            &key,
            "this version was deleted on the server after it was listed (a lifecycle rule?): \
             the file is not as it was then",
        ),
        Done::Vanished => rep.note(
            &key,
            "deleted on the server after it was listed: not restored",
        ),
        Done::Failed(m) => rep.failed(&key, &m),
        Done::Broken(e) => {
            if broken.is_none() {
                *broken = Some(e);
            }
        }
    };
    for item in items {
        if stop.requested() || broken.is_some() {
            break;
        }
        let key = item.object.key.clone();
        if key.ends_with('/') && item.object.size == 0 {
            // A folder marker (made by consoles and some tools).
            rep.skipped(&key, "a folder marker");
            continue;
        }
        let rel = match rel_path(loc, &key) {
            Ok(rel) => rel.to_string(),
            Err(why) => {
                rep.failed(&key, &format!("not restored: {why}"));
                continue;
            }
        };
        wanted.insert(rel.clone());
        let (path, local) = match prepare(&cfg.dir, &rel, cfg.dry_run) {
            Ok(p) => p,
            Err(why) => {
                rep.failed(&key, &why);
                continue;
            }
        };
        let permit = started
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let job = Job {
            store: store.clone(),
            bucket: loc.bucket.clone(),
            item,
            path: path.clone(),
            local,
            checksum: cfg.checksum,
            dry_run: cfg.dry_run,
            threshold: cfg.transfer.multipart_threshold,
            chunk: cfg.transfer.chunk_size,
            requests: requests.clone(),
        };
        let shown = path.display().to_string();
        set.spawn(async move {
            let done = job.run().await;
            drop(permit);
            (key, shown, done)
        });
        while let Some(r) = set.try_join_next() {
            let (key, path, done) = r.map_err(|e| anyhow!("a download task failed: {e}"))?;
            on_done(key, path, done, &mut archived, &mut broken);
            rep.tick();
        }
    }
    while let Some(r) = set.join_next().await {
        let (key, path, done) = r.map_err(|e| anyhow!("a download task failed: {e}"))?;
        on_done(key, path, done, &mut archived, &mut broken);
        rep.tick();
    }
    if let Some(e) = broken {
        return Err(anyhow::Error::new(e).context(format!("cannot restore from {loc}")));
    }
    if !archived.is_empty() {
        let shown: Vec<String> = archived
            .iter()
            .take(10)
            .map(|k| printable(k).into_owned())
            .collect();
        let more = archived.len().saturating_sub(shown.len());
        rep.failed(
            &loc.to_string(),
            &format!(
                "{} in an archive storage class (GLACIER, DEEP_ARCHIVE) and cannot be read \
                 until restored on the server: {}{}; restore them first (aws s3api \
                 restore-object --bucket {} --key KEY --restore-request Days=7, or your \
                 provider's console), wait until that is done (hours), then run s3ma restore \
                 again",
                match archived.len() {
                    1 => "1 object is".to_string(),
                    n => format!("{n} objects are"),
                },
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
                loc.bucket
            ),
        );
    }
    if stop.requested() {
        rep.summary_restore(cfg.dry_run);
        return Ok(Exit::Interrupted);
    }
    if cfg.delete {
        if wanted.is_empty() {
            rep.summary_restore(cfg.dry_run);
            bail!(
                "no object under {loc}{when} is a file to restore (only folder markers or \
                 refused keys): --delete deletes nothing"
            );
        }
        let extra = unmatched(cfg, &wanted, rep)?;
        if let Some(max) = cfg.max_delete.filter(|m| extra.len() as u64 > *m) {
            rep.summary_restore(cfg.dry_run);
            bail!(
                "refusing to delete {} files under {}: more than --max-delete {max}; nothing was \
                 deleted (raise --max-delete if this is intended)",
                extra.len(),
                cfg.dir.display()
            );
        }
        for path in extra {
            let shown = path.display().to_string();
            if cfg.dry_run {
                rep.deleted_file(&shown, true);
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    rep.deleted_file(&shown, false);
                    prune_dirs(&cfg.dir, &path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => rep.failed(&shown, &format!("cannot delete: {e}")),
            }
        }
    }
    rep.summary_restore(cfg.dry_run);
    Ok(if rep.failures() > 0 {
        Exit::Partial
    } else {
        Exit::Success
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_leave_the_directory_are_refused() {
        let loc = Location::new("b", "site/").expect("location");
        assert_eq!(rel_path(&loc, "site/a/b.txt"), Ok("a/b.txt"));
        for bad in [
            "site/../etc/passwd",
            "site/a/../../x",
            "site/./a",
            "site//a",
            "site/a//b",
            "site/",
            "site/a\0b",
        ] {
            assert!(rel_path(&loc, bad).is_err(), "{bad:?}");
        }
        assert!(rel_path(&loc, "other/a").is_err());
    }

    #[test]
    fn a_symlinked_directory_on_the_way_is_refused_and_missing_ones_are_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
        let err = prepare(dir.path(), "link/x.txt", false)
            .err()
            .expect("refused");
        assert!(err.contains("is a symbolic link"), "{err}");
        assert!(std::fs::read_dir(outside.path())
            .expect("read")
            .next()
            .is_none());
        let (path, local) = prepare(dir.path(), "a/b/c.txt", false).expect("made");
        assert!(matches!(local, Local::Nothing));
        assert!(dir.path().join("a/b").is_dir());
        assert_eq!(path, dir.path().join("a/b/c.txt"));
        std::fs::write(dir.path().join("a/b/c.txt"), "x").expect("write");
        let err = prepare(dir.path(), "a/b/c.txt/d", false)
            .err()
            .expect("refused");
        assert!(err.contains("is a file"), "{err}");
        // A dry run makes nothing.
        prepare(dir.path(), "new/dir/f", true).expect("dry run");
        assert!(!dir.path().join("new").exists());
    }
}
