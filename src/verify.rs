//! `s3ma verify`: compares a directory with its mirror, file by file, and
//! trusts nothing s3ma recorded: every local file is hashed, and every
//! object's MD5 comes from the server (its `md5chksum` metadata or a plain
//! ETag), or from its bytes with `--download`.
//!
//! The walk and the listing are merged in key order exactly as `sync`
//! merges them (same filters, same kept paths), so "verify says equal"
//! means "a sync would have nothing to do". The comparisons of matching
//! pairs run concurrently, bounded by the request limit.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{Connection, SyncConfig};
use crate::headers::HeaderSet;
use crate::report::{human_size, Reporter};
use crate::scan::{self, LocalFile};
use crate::store::{Blame, ObjectInfo, Store, StoreError};
use crate::sync::{self, Merge, Pair, Stop};
use crate::transfer::{blocking, hash_file, UploadError};

/// What a verification found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub matched: u64,
    /// Files with no object.
    pub missing: u64,
    /// Objects with no file.
    pub extra: u64,
    /// Size or MD5 differ.
    pub differ: u64,
    /// Same size, but nothing tells the object's MD5 (use `--download`).
    pub unverified: u64,
    /// Files that could not be read, objects that could not be read.
    pub errors: u64,
}

impl Found {
    /// The mirror is exact, as far as could be checked.
    pub fn clean(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.differ == 0 && self.errors == 0
    }
}

/// The result of comparing one file with its object.
enum Check {
    Match,
    Differ(String),
    Unverified,
    /// About this file or object; the others are still compared.
    Error(String),
    /// The server failed, or the configuration is wrong: no comparison
    /// can be trusted to go on.
    Broken(StoreError),
}

/// A store error while checking `what`: about this object, or about all.
fn failed(what: &str, e: StoreError) -> Check {
    match e.blame() {
        Blame::Request => Check::Error(format!("{what}: {e}")),
        Blame::Server | Blame::Fatal => Check::Broken(e),
    }
}

/// Hashes the file and finds the object's MD5 (from the listing's ETag,
/// a HEAD, or the bytes) and compares them.
async fn check(
    store: Store,
    bucket: String,
    file: LocalFile,
    object: ObjectInfo,
    download: bool,
    want: Option<HeaderSet>,
) -> Check {
    let content = check_content(&store, &bucket, &file, &object, download).await;
    let Some(want) = want.filter(|_| matches!(content, Check::Match | Check::Unverified)) else {
        return content;
    };
    match store.head(&bucket, &object.key).await {
        Ok(h) => {
            let differ = crate::headers::differences(&want, &h.headers);
            if differ.is_empty() {
                content
            } else {
                Check::Differ(format!("headers: {}", differ.join("; ")))
            }
        }
        Err(e) => failed("cannot read its headers", e),
    }
}

/// The object's bytes against the file's.
async fn check_content(
    store: &Store,
    bucket: &str,
    file: &LocalFile,
    object: &ObjectInfo,
    download: bool,
) -> Check {
    let (path, size) = (file.path.clone(), file.size);
    let local = match blocking(move || hash_file(&path, size)).await {
        Ok(md5) => md5,
        Err(UploadError::Changed) => {
            return Check::Error("the file changed while it was read; verify again".into())
        }
        Err(e) => return Check::Error(format!("cannot read {}: {e}", file.path.display())),
    };
    let remote = if download {
        match store.get_md5(bucket, &object.key).await {
            Ok((n, _)) if n != file.size => {
                return Check::Differ(format!(
                    "{} here, {} downloaded",
                    human_size(file.size),
                    human_size(n)
                ))
            }
            Ok((_, md5)) => Some(md5),
            Err(e) => return failed("cannot download it", e),
        }
    } else {
        let listed = object.etag.as_deref().and_then(|e| store.etag_md5(e));
        match listed {
            Some(md5) if md5 == local => Some(md5),
            // No plain-MD5 ETag, or one that disagrees: ask for the
            // md5chksum metadata.
            _ => match store.head(bucket, &object.key).await {
                Ok(h) => match (listed, store.facts(&h).md5) {
                    // The ETag says otherwise, the metadata agrees: an
                    // encrypted object's ETag is no MD5, so only the bytes
                    // can tell (--download).
                    (Some(_), Some(meta)) if meta == local => return Check::Unverified,
                    (_, md5) => md5,
                },
                Err(e) => return failed("cannot read its metadata", e),
            },
        }
    };
    match remote {
        None => Check::Unverified,
        Some(r) if r == local => Check::Match,
        Some(r) => Check::Differ(format!(
            "MD5 {} here, {} in the bucket",
            hex(&local),
            hex(&r)
        )),
    }
}

fn hex(md5: &[u8; 16]) -> String {
    md5.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares `cfg.dir` with `cfg.dest`. Differences are reported as they
/// are found; the counts come back. An error means the comparison could
/// not be made (the bucket cannot be listed, the tree cannot be walked).
pub async fn run(
    cfg: &SyncConfig,
    conn: &Connection,
    rep: &Reporter,
    download: bool,
    stop: &Stop,
) -> Result<Found> {
    scan::check_root(&cfg.dir)?;
    let filter = cfg.filter()?;
    let store = Store::connect(conn)
        .await?
        .with_sse(cfg.transfer.sse.clone());
    let started = Instant::now();
    let (walker, mut lrx) = sync::spawn_walk(cfg, &filter);
    let (lister, mut rrx) = sync::spawn_listing(&store, cfg, Vec::new());
    let requests = Arc::new(Semaphore::new(cfg.transfer.concurrency));
    let rules = &cfg.transfer.headers;
    let mut merge = Merge::default();
    let mut found = Found::default();
    let mut tasks: JoinSet<(String, Check)> = JoinSet::new();
    let failures_before = rep.failures();

    let merged: Result<()> = async {
        loop {
            if stop.requested() {
                bail!("interrupted; the comparison is incomplete");
            }
            while let Some(done) = tasks.try_join_next() {
                tally(rep, &mut found, done.context("a comparison task failed")?)?;
            }
            let (key, file, matched) = match merge
                .next_pair(&mut lrx, &mut rrx, cfg, rep, &filter)
                .await?
            {
                None => break,
                Some(Pair::Extra(r)) => {
                    found.extra += 1;
                    rep.difference(
                        "extra",
                        &r.key,
                        &format!("{}, no local file", human_size(r.size)),
                    );
                    continue;
                }
                Some(Pair::File { key, file, object }) => (key, file, object),
            };
            rep.scanned();
            let Some(object) = matched else {
                found.missing += 1;
                rep.difference(
                    "missing",
                    &key,
                    &format!(
                        "{} ({}) is not in the bucket",
                        file.rel,
                        human_size(file.size)
                    ),
                );
                continue;
            };
            if object.size != file.size {
                found.differ += 1;
                rep.difference(
                    "differ",
                    &key,
                    &format!(
                        "{} here, {} in the bucket",
                        human_size(file.size),
                        human_size(object.size)
                    ),
                );
                continue;
            }
            let permit = requests
                .clone()
                .acquire_owned()
                .await
                .context("the request limiter closed")?;
            let (store, bucket) = (store.clone(), cfg.dest.bucket.clone());
            // With header rules, what the object should be served with.
            let want = (!rules.is_empty()).then(|| cfg.transfer.headers_for(&key, &file.rel));
            tasks.spawn(async move {
                let result = check(store, bucket, file, object, download, want).await;
                drop(permit);
                (key, result)
            });
        }
        Ok(())
    }
    .await;
    let mut broken = Ok(());
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(done) => {
                if let Err(e) = tally(rep, &mut found, done) {
                    broken = broken.and(Err(e));
                }
            }
            Err(e) => {
                found.errors += 1;
                rep.failed("comparison task", &format!("failed: {e}"));
            }
        }
    }
    drop(lrx);
    drop(rrx);
    lister.abort();
    let walked = walker.await;
    merged
        .and(broken)
        .with_context(|| format!("cannot verify {} against {}", cfg.dir.display(), cfg.dest))?;
    if walked.is_err() {
        return Err(anyhow!("the directory walk stopped unexpectedly"));
    }
    // Also unreadable files and directories, names that cannot be keys.
    found.errors = rep.failures().saturating_sub(failures_before);
    let text = format!(
        "verified {} against {} in {:.2} s: {} match, {} missing, {} extra, {} differ, {} \
         unverified, {} errors",
        cfg.dir.display(),
        cfg.dest,
        started.elapsed().as_secs_f64(),
        found.matched,
        found.missing,
        found.extra,
        found.differ,
        found.unverified,
        found.errors
    );
    rep.status(
        "verify",
        &text,
        json!({"matched": found.matched, "missing": found.missing, "extra": found.extra,
               "differ": found.differ, "unverified": found.unverified, "errors": found.errors,
               "clean": found.clean()}),
    );
    if found.unverified > 0 {
        rep.warn(&format!(
            "{} objects have the right size but no MD5 that can be trusted (a multipart \
             object without md5chksum metadata, or an ETag that is no MD5 and disagrees with \
             it); run with --download to hash their bytes",
            found.unverified
        ));
    }
    Ok(found)
}

/// Counts one comparison; a broken one ends the verification.
fn tally(rep: &Reporter, found: &mut Found, (key, check): (String, Check)) -> Result<()> {
    match check {
        Check::Match => {
            found.matched += 1;
            rep.skipped(&key, "same size and MD5");
        }
        Check::Differ(detail) => {
            found.differ += 1;
            rep.difference("differ", &key, &detail);
        }
        Check::Unverified => {
            found.unverified += 1;
            rep.skipped(&key, "same size; no MD5 known for the object");
        }
        Check::Error(message) => {
            found.errors += 1;
            rep.failed(&key, &message);
        }
        Check::Broken(e) => return Err(anyhow!(e)).with_context(|| format!("checking {key}")),
    }
    Ok(())
}
