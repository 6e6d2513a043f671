//! The local state database and the run lock.
//!
//! One SQLite file per (directory, destination) pair under the state dir
//! remembers, per key, what was last uploaded: size, the file's mtime in
//! nanoseconds, the MD5 and the ETag the server returned. It is a cache: a
//! missing or corrupt database is recreated and the next run converges by
//! asking the server (HEAD) and hashing. Writes are batched in transactions
//! committed by [`State::flush`]; a crash loses at most the last batch,
//! which the next run re-verifies.
//!
//! A record a write may be replacing is marked unsure first (committed at
//! once): it then vouches for nothing until the write's outcome is
//! recorded, so a crash mid-write never leaves a record the object does not
//! match; the key stays known, so deletions still find it.
//!
//! Beside it, a `.lock` file (named after the destination alone) holds an
//! exclusive advisory lock while a sync or watch of that destination runs.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use md5::{Digest, Md5};
use rusqlite::{params, Connection, OptionalExtension};

/// What s3ma last uploaded for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub size: u64,
    pub mtime_ns: i64,
    pub md5: [u8; 16],
    pub etag: Option<String>,
}

/// The state database for one directory and destination.
pub struct State {
    conn: Option<Connection>,
    path: PathBuf,
    in_tx: bool,
    pending: usize,
    /// Set after a failed query: the database is then ignored for the rest
    /// of the run (it is only a cache).
    pub broken: Option<String>,
}

/// Commit after this many writes.
const BATCH: usize = 512;

/// Past every key that starts with `prefix`: no UTF-8 sequence sorts
/// after U+10FFFF.
fn key_end(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// A stable short name for a (directory, destination) identity.
pub fn state_id(identity: &str) -> String {
    let digest = Md5::digest(identity.as_bytes());
    hex::encode(&digest[..8])
}

/// Holds the exclusive lock of one (directory, destination) pair.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Outcome of trying to take the run lock.
pub enum LockResult {
    Acquired(RunLock),
    Busy(PathBuf),
}

fn ensure_dir(state_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(state_dir).with_context(|| {
        format!(
            "cannot create the state directory {} (choose another with --state-dir)",
            state_dir.display()
        )
    })
}

/// The paths in a `dirty` table (the watch journal's, in this database's
/// old layout or in the journal's own file), in order.
pub fn journaled(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT rel FROM dirty ORDER BY rel")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
}

/// Renames the database (and the records beside it) of `from` to `to`,
/// when `to` has none yet: a pair whose identity was spelled differently
/// by an earlier version keeps what it knew.
pub fn adopt(state_dir: &Path, from: &str, to: &str) {
    let name = |id: &str, suffix: &str| state_dir.join(format!("{id}{suffix}"));
    if from == to || name(to, ".db").exists() || !name(from, ".db").exists() {
        return;
    }
    for suffix in [".db", ".db-wal", ".db-shm", ".uploads", ".journal"] {
        let _ = std::fs::rename(name(from, suffix), name(to, suffix));
    }
}

pub fn lock(state_dir: &Path, id: &str) -> Result<LockResult> {
    ensure_dir(state_dir)?;
    let path = state_dir.join(format!("{id}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(LockResult::Acquired(RunLock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(LockResult::Busy(path)),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

impl State {
    /// Opens (or creates) the database `<id>.db`. A corrupt file is moved
    /// aside to `<id>.db.corrupt` and a fresh one started; the returned
    /// warning says so.
    pub fn open(state_dir: &Path, id: &str, identity: &str) -> Result<(State, Option<String>)> {
        ensure_dir(state_dir)?;
        let path = state_dir.join(format!("{id}.db"));
        match Self::try_open(&path, identity) {
            Ok(conn) => Ok((State::with(conn, path), None)),
            Err(first) => {
                let aside = path.with_extension("db.corrupt");
                let _ = std::fs::rename(&path, &aside);
                for suffix in ["-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(p));
                }
                let conn = Self::try_open(&path, identity).with_context(|| {
                    format!("cannot create the state database {}", path.display())
                })?;
                let warning = format!(
                    "the state database {} could not be read ({first:#}); moved it to {} and \
                     started a new one (this run re-checks objects against the server)",
                    path.display(),
                    aside.display()
                );
                Ok((State::with(conn, path), Some(warning)))
            }
        }
    }

    fn with(conn: Connection, path: PathBuf) -> State {
        State {
            conn: Some(conn),
            path,
            in_tx: false,
            pending: 0,
            broken: None,
        }
    }

    fn try_open(path: &Path, identity: &str) -> Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS objects (
                 key TEXT PRIMARY KEY,
                 size INTEGER NOT NULL,
                 mtime_ns INTEGER NOT NULL,
                 md5 BLOB NOT NULL,
                 etag TEXT
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS dirty (rel TEXT PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS attrs (key TEXT PRIMARY KEY, attrs TEXT NOT NULL)
                 WITHOUT ROWID;",
        )?;
        // Databases of earlier versions lack the column that marks a record
        // unsure.
        let has_unsure = conn
            .prepare("SELECT 1 FROM pragma_table_info('objects') WHERE name = 'unsure'")?
            .exists([])?;
        if !has_unsure {
            conn.execute_batch("ALTER TABLE objects ADD COLUMN unsure INTEGER")?;
        }
        conn.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES ('identity', ?1)",
            params![identity],
        )?;
        let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
        anyhow::ensure!(check == "ok", "integrity check failed: {check}");
        Ok(conn)
    }

    /// A state that remembers nothing (for `--dry-run` without a database).
    pub fn disabled() -> State {
        State {
            conn: None,
            path: PathBuf::new(),
            in_tx: false,
            pending: 0,
            broken: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&mut self, what: &str, e: rusqlite::Error) {
        if self.broken.is_none() {
            self.broken = Some(format!(
                "the state database {} failed ({what}: {e}); continuing without it",
                self.path.display()
            ));
        }
        self.conn = None;
    }

    /// What was last uploaded to `key`, when the object is known to be
    /// that (an unsure record, one a write may have replaced, is none).
    pub fn get(&mut self, key: &str) -> Option<Record> {
        let conn = self.conn.as_ref()?;
        let res = conn
            .prepare_cached(
                "SELECT size, mtime_ns, md5, etag FROM objects WHERE key = ?1 AND unsure IS NULL",
            )
            .and_then(|mut st| {
                st.query_row(params![key], |r| {
                    let md5: Vec<u8> = r.get(2)?;
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, md5, r.get(3)?))
                })
                .optional()
            });
        match res {
            Ok(Some((size, mtime_ns, md5, etag))) => Some(Record {
                size: size.max(0) as u64,
                mtime_ns,
                md5: md5.try_into().ok()?,
                etag,
            }),
            Ok(None) => None,
            Err(e) => {
                self.fail("read", e);
                None
            }
        }
    }

    fn begin(&mut self) -> bool {
        let Some(conn) = self.conn.as_ref() else {
            return false;
        };
        if !self.in_tx {
            if let Err(e) = conn.execute_batch("BEGIN") {
                self.fail("begin", e);
                return false;
            }
            self.in_tx = true;
        }
        true
    }

    fn wrote(&mut self) {
        self.pending += 1;
        if self.pending >= BATCH {
            self.flush();
        }
    }

    /// The file attributes (`--metadata`) the object at `key` was last
    /// written with.
    pub fn attrs(&mut self, key: &str) -> Option<String> {
        let res = self.conn.as_ref().map(|c| {
            c.prepare_cached("SELECT attrs FROM attrs WHERE key = ?1")
                .and_then(|mut st| {
                    st.query_row(params![key], |r| r.get::<_, String>(0))
                        .optional()
                })
        })?;
        match res {
            Ok(v) => v,
            Err(e) => {
                self.fail("read", e);
                None
            }
        }
    }

    pub fn set_attrs(&mut self, key: &str, attrs: &str) {
        if !self.begin() {
            return;
        }
        let res = self.conn.as_ref().map(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO attrs (key, attrs) VALUES (?1, ?2)")
                .and_then(|mut st| st.execute(params![key, attrs]))
        });
        match res {
            Some(Ok(_)) => self.wrote(),
            Some(Err(e)) => self.fail("write", e),
            None => {}
        }
    }

    pub fn put(&mut self, key: &str, rec: &Record) {
        if !self.begin() {
            return;
        }
        let res = self.conn.as_ref().map(|c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO objects (key, size, mtime_ns, md5, etag)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    key,
                    rec.size as i64,
                    rec.mtime_ns,
                    &rec.md5[..],
                    rec.etag
                ])
            })
        });
        match res {
            Some(Ok(_)) => self.wrote(),
            Some(Err(e)) => self.fail("write", e),
            None => {}
        }
    }

    /// A write to `key` is about to start: until its outcome is recorded,
    /// the record no longer vouches for the object (committed at once, so
    /// it holds after a crash), though the key stays known to be in use.
    pub fn mark_unsure(&mut self, key: &str) {
        self.mark_unsure_all([key]);
    }

    /// [`State::mark_unsure`] for many keys, in one commit.
    pub fn mark_unsure_all<'a>(&mut self, keys: impl IntoIterator<Item = &'a str>) {
        if !self.begin() {
            return;
        }
        for key in keys {
            let res = self.conn.as_ref().map(|c| {
                c.prepare_cached("UPDATE objects SET unsure = 1 WHERE key = ?1")
                    .and_then(|mut st| st.execute(params![key]))
            });
            if let Some(Err(e)) = res {
                return self.fail("write", e);
            }
        }
        self.flush();
    }

    /// A value kept beside the records (`watch` keeps the identity of the
    /// directory it last watched).
    pub fn meta(&mut self, name: &str) -> Option<String> {
        let conn = self.conn.as_ref()?;
        let res = conn
            .prepare_cached("SELECT value FROM meta WHERE name = ?1")
            .and_then(|mut st| st.query_row(params![name], |r| r.get(0)).optional());
        match res {
            Ok(v) => v,
            Err(e) => {
                self.fail("read", e);
                None
            }
        }
    }

    pub fn set_meta(&mut self, name: &str, value: &str) {
        if !self.begin() {
            return;
        }
        let res = self.conn.as_ref().map(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)")
                .and_then(|mut st| st.execute(params![name, value]))
        });
        match res {
            Some(Ok(_)) => self.flush(),
            Some(Err(e)) => self.fail("write", e),
            None => {}
        }
    }

    /// The size last recorded for `key`, sure or not: is an object there,
    /// as far as s3ma knows?
    pub fn known(&mut self, key: &str) -> Option<u64> {
        let conn = self.conn.as_ref()?;
        let res = conn
            .prepare_cached("SELECT size FROM objects WHERE key = ?1")
            .and_then(|mut st| {
                st.query_row(params![key], |r| r.get::<_, i64>(0))
                    .optional()
            });
        match res {
            Ok(size) => size.map(|s| s.max(0) as u64),
            Err(e) => {
                self.fail("read", e);
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) {
        if !self.begin() {
            return;
        }
        let res = self.conn.as_ref().map(|c| {
            c.prepare_cached("DELETE FROM objects WHERE key = ?1")
                .and_then(|mut st| st.execute(params![key]))
        });
        match res {
            Some(Ok(_)) => self.wrote(),
            Some(Err(e)) => self.fail("delete", e),
            None => {}
        }
    }

    /// Takes the paths a watch journal kept in this database (before the
    /// journal had a file of its own) off it, to be journaled anew.
    pub fn take_legacy_journal(&mut self) -> Vec<String> {
        let Some(conn) = self.conn.as_ref() else {
            return Vec::new();
        };
        match journaled(conn) {
            Ok(rels) => {
                if !rels.is_empty() {
                    if let Err(e) = conn.execute("DELETE FROM dirty", []) {
                        self.fail("journal", e);
                    }
                }
                rels
            }
            Err(e) => {
                self.fail("journal read", e);
                Vec::new()
            }
        }
    }

    /// Is any record under `prefix` unsure (a write may have replaced its
    /// object)?
    pub fn has_unsure_under(&mut self, prefix: &str) -> bool {
        let Some(conn) = self.conn.as_ref() else {
            return true;
        };
        let res = conn
            .prepare_cached(
                "SELECT 1 FROM objects WHERE key >= ?1 AND key < ?2 AND unsure IS NOT NULL LIMIT 1",
            )
            .and_then(|mut st| st.exists(params![prefix, key_end(prefix)]));
        match res {
            Ok(found) => found,
            Err(e) => {
                self.fail("read", e);
                true
            }
        }
    }

    /// The keys on record under `prefix`, sure or not.
    pub fn count_under(&mut self, prefix: &str) -> u64 {
        let Some(conn) = self.conn.as_ref() else {
            return 0;
        };
        let res: Result<i64, _> = conn
            .prepare_cached("SELECT count(*) FROM objects WHERE key >= ?1 AND key < ?2")
            .and_then(|mut st| st.query_row(params![prefix, key_end(prefix)], |r| r.get(0)));
        match res {
            Ok(n) => n.max(0) as u64,
            Err(e) => {
                self.fail("read", e);
                0
            }
        }
    }

    /// Keys on record under `prefix` that split its `n` keys (as
    /// [`State::count_under`] gave them) into `parts` ranges of about equal
    /// size: at most `parts - 1` keys, in order, found in one pass.
    pub fn boundaries(&mut self, prefix: &str, parts: usize, n: u64) -> Vec<String> {
        let Some(conn) = self.conn.as_ref() else {
            return Vec::new();
        };
        let parts = parts.max(1) as u64;
        // The key at index k·n/parts, for k = 1 … parts-1.
        let at = |k: u64| k * n / parts;
        let mut out: Vec<String> = Vec::with_capacity(parts as usize - 1);
        let res = conn
            .prepare_cached("SELECT key FROM objects WHERE key >= ?1 AND key < ?2 ORDER BY key")
            .and_then(|mut st| {
                let mut rows = st.query(params![prefix, key_end(prefix)])?;
                let mut index = 0u64;
                let mut k = 1u64;
                while k < parts {
                    let Some(row) = rows.next()? else {
                        break;
                    };
                    if index == at(k) {
                        let key: String = row.get(0)?;
                        if out.last().is_none_or(|l| *l < key) {
                            out.push(key);
                        }
                        // Several k may fall on one index when n < parts.
                        while k < parts && at(k) <= index {
                            k += 1;
                        }
                    }
                    index += 1;
                }
                Ok(())
            });
        match res {
            Ok(()) => out,
            Err(e) => {
                self.fail("read", e);
                Vec::new()
            }
        }
    }

    /// Keys on record under `dir/` (`dir` a key without the trailing `/`),
    /// sure or not, with their sizes.
    pub fn keys_under(&mut self, dir: &str) -> Vec<(String, u64)> {
        let Some(conn) = self.conn.as_ref() else {
            return Vec::new();
        };
        // Keys starting with "dir/" sort between "dir/" and "dir0" ('0' is
        // the byte after '/').
        let res = conn
            .prepare_cached(
                "SELECT key, size FROM objects WHERE key >= ?1 AND key < ?2 ORDER BY key",
            )
            .and_then(|mut st| {
                st.query_map(params![format!("{dir}/"), format!("{dir}0")], |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64))
                })?
                .collect()
            });
        match res {
            Ok(v) => v,
            Err(e) => {
                self.fail("read", e);
                Vec::new()
            }
        }
    }

    /// Commits pending writes.
    pub fn flush(&mut self) {
        if !self.in_tx {
            return;
        }
        self.in_tx = false;
        self.pending = 0;
        if let Some(conn) = self.conn.as_ref() {
            if let Err(e) = conn.execute_batch("COMMIT") {
                self.fail("commit", e);
            }
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A read-only connection to a database (the state database or the
/// journal) that a running sync or watch may be writing: beside it, without
/// its lock.
pub fn open_read_only(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Reads the records under `prefix` from the database at `path` (its own
/// read-only connection, beside the run's), in key order, `page` at a time,
/// giving each to `each` until it returns false.
pub fn each_record(
    path: &Path,
    prefix: &str,
    page: usize,
    mut each: impl FnMut(String, u64, Option<String>) -> bool,
) -> Result<()> {
    let conn = open_read_only(path)?;
    let mut st = conn.prepare(
        "SELECT key, size, etag FROM objects WHERE key >= ?1 AND key < ?2 AND key > ?3 \
         ORDER BY key LIMIT ?4",
    )?;
    let end = key_end(prefix);
    // No key is empty: "" is before the first.
    let mut after = String::new();
    loop {
        let rows: Vec<(String, u64, Option<String>)> = st
            .query_map(params![prefix, end, after, page as i64], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last().map(|r| r.0.clone()) else {
            return Ok(());
        };
        for (key, size, etag) in rows {
            if key.starts_with(prefix) && !each(key, size, etag) {
                return Ok(());
            }
        }
        after = last;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(size: u64) -> Record {
        Record {
            size,
            mtime_ns: 1_700_000_000_123_456_789,
            md5: [7; 16],
            etag: Some("abc".into()),
        }
    }

    #[test]
    fn round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut s, w) = State::open(dir.path(), "x", "id").expect("open");
            assert!(w.is_none());
            s.put("a/b.txt", &rec(5));
            s.put("c", &rec(6));
            s.remove("c");
            assert_eq!(s.get("a/b.txt"), Some(rec(5)));
        }
        let (mut s, _) = State::open(dir.path(), "x", "id").expect("reopen");
        assert_eq!(s.get("a/b.txt"), Some(rec(5)));
        assert_eq!(s.get("c"), None);
    }

    #[test]
    fn records_are_read_in_key_order_page_by_page() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, _) = State::open(dir.path(), "x", "id").expect("open");
        let rec = Record {
            size: 3,
            mtime_ns: 1,
            md5: [0; 16],
            etag: Some("e".into()),
        };
        for key in [
            "site-x",
            "site/b",
            "site/a",
            "site/",
            "site0",
            "site/日本",
            "other",
        ] {
            s.put(key, &rec);
        }
        s.flush();
        let mut seen = Vec::new();
        each_record(s.path(), "site/", 2, |k, size, etag| {
            assert_eq!((size, etag.as_deref()), (3, Some("e")));
            seen.push(k);
            true
        })
        .expect("read");
        assert_eq!(seen, ["site/", "site/a", "site/b", "site/日本"]);
        let mut all = 0;
        each_record(s.path(), "", 3, |_, _, _| {
            all += 1;
            true
        })
        .expect("read");
        assert_eq!(all, 7);
        let mut first = Vec::new();
        each_record(s.path(), "site/", 2, |k, _, _| {
            first.push(k);
            false
        })
        .expect("read");
        assert_eq!(first, ["site/"]);
    }

    #[test]
    fn boundaries_split_the_keys_on_record_evenly() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, _) = State::open(dir.path(), "x", "id").expect("open");
        let rec = Record {
            size: 1,
            mtime_ns: 1,
            md5: [0; 16],
            etag: None,
        };
        for i in 0..100 {
            s.put(&format!("p/{i:03}"), &rec);
        }
        s.put("other/x", &rec);
        s.flush();
        assert_eq!(s.count_under("p/"), 100);
        assert_eq!(s.boundaries("p/", 4, 100), ["p/025", "p/050", "p/075"]);
        assert!(s.boundaries("q/", 4, 0).is_empty());
        // "other/x" sorts first of the 101.
        assert_eq!(s.boundaries("", 2, 101), ["p/049"]);
    }

    #[test]
    fn keys_under_a_directory_and_the_old_journal_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut s, _) = State::open(dir.path(), "x", "id").expect("open");
            s.put("d/1", &rec(1));
            s.put("d/2/3", &rec(1));
            s.put("d0", &rec(1));
            s.put("d", &rec(1));
            assert_eq!(
                s.keys_under("d"),
                [("d/1".to_string(), 1), ("d/2/3".to_string(), 1)]
            );
            let conn = s.conn.as_ref().expect("open");
            conn.execute("INSERT INTO dirty (rel) VALUES ('b/c.txt'), ('a.txt')", [])
                .expect("insert");
        }
        let (mut s, _) = State::open(dir.path(), "x", "id").expect("reopen");
        assert_eq!(s.take_legacy_journal(), ["a.txt", "b/c.txt"]);
        assert!(s.take_legacy_journal().is_empty());
    }

    #[test]
    fn an_unsure_record_vouches_for_nothing_but_stays_known() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut s, _) = State::open(dir.path(), "x", "id").expect("open");
            s.put("d/a", &rec(5));
            s.mark_unsure("d/a");
            // Committed at once: a crash now keeps it unsure.
            std::mem::forget(s);
        }
        let (mut s, _) = State::open(dir.path(), "x", "id").expect("reopen");
        assert_eq!(s.get("d/a"), None);
        assert_eq!(s.known("d/a"), Some(5));
        assert_eq!(s.keys_under("d"), [("d/a".to_string(), 5)]);
        s.put("d/a", &rec(6));
        assert_eq!(s.get("d/a"), Some(rec(6)));
    }

    #[test]
    fn a_database_of_an_earlier_version_gets_the_unsure_column() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = Connection::open(dir.path().join("x.db")).expect("open");
        conn.execute_batch(
            "CREATE TABLE objects (key TEXT PRIMARY KEY, size INTEGER NOT NULL,
                 mtime_ns INTEGER NOT NULL, md5 BLOB NOT NULL, etag TEXT) WITHOUT ROWID;
             INSERT INTO objects VALUES ('k', 5, 1700000000123456789, x'07070707070707070707070707070707', 'abc');",
        )
        .expect("old schema");
        drop(conn);
        let (mut s, w) = State::open(dir.path(), "x", "id").expect("open");
        assert!(w.is_none(), "{w:?}");
        assert_eq!(s.get("k"), Some(rec(5)));
    }

    #[test]
    fn adopting_renames_an_old_database_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut s, _) = State::open(dir.path(), "old", "id").expect("open");
            s.put("k", &rec(3));
        }
        adopt(dir.path(), "old", "new");
        let (mut s, _) = State::open(dir.path(), "new", "id").expect("open");
        assert_eq!(s.get("k"), Some(rec(3)));
        drop(s);
        // The new one is kept from then on.
        let (mut o, _) = State::open(dir.path(), "old", "id").expect("open");
        o.put("other", &rec(4));
        drop(o);
        adopt(dir.path(), "old", "new");
        let (mut s, _) = State::open(dir.path(), "new", "id").expect("open");
        assert_eq!(s.get("other"), None);
    }

    #[test]
    fn corrupt_database_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("x.db"),
            b"this is not sqlite at all, not at all",
        )
        .expect("write");
        let (mut s, w) = State::open(dir.path(), "x", "id").expect("open");
        assert!(w.expect("a warning").contains("could not be read"));
        assert_eq!(s.get("a"), None);
        s.put("a", &rec(1));
        assert_eq!(s.get("a"), Some(rec(1)));
        assert!(dir.path().join("x.db.corrupt").exists());
    }

    #[test]
    fn second_lock_is_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock(dir.path(), "x").expect("lock");
        assert!(matches!(first, LockResult::Acquired(_)));
        assert!(matches!(
            lock(dir.path(), "x").expect("lock"),
            LockResult::Busy(_)
        ));
        drop(first);
        assert!(matches!(
            lock(dir.path(), "x").expect("lock"),
            LockResult::Acquired(_)
        ));
    }
}
