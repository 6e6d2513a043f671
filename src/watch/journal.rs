//! The watch journal: every changed path, written down before anything
//! else happens to it and taken off once it is mirrored, so a crash at any
//! moment loses nothing (the next start re-checks the journal's paths).
//!
//! A SQLite file of its own beside the state database (`<id>.journal`),
//! so intake can journal events while a reconcile holds the state
//! database. Marks are committed at once ([`Journal::mark`]); clears are
//! batched until the next [`Journal::commit`] (a clear lost in a crash only
//! makes the next start look at a path once more). When the file cannot be
//! used, the daemon goes on without it (said once): it loses crash safety,
//! not correctness while it runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::{params, Connection};

pub struct Journal {
    conn: Option<Connection>,
    path: PathBuf,
    clears: Vec<String>,
    /// Set when the file failed; the message says so.
    pub broken: Option<String>,
}

impl Journal {
    /// Opens (or creates) the journal at `path`; an unreadable one is moved
    /// aside (the returned warning says so) and a new one started.
    pub fn open(path: &Path) -> Result<(Journal, Option<String>)> {
        let journal = |conn| Journal {
            conn: Some(conn),
            path: path.to_path_buf(),
            clears: Vec::new(),
            broken: None,
        };
        match Self::try_open(path) {
            Ok(conn) => Ok((journal(conn), None)),
            Err(first) => {
                let aside = path.with_extension("journal.corrupt");
                let _ = std::fs::rename(path, &aside);
                let conn = Self::try_open(path)
                    .with_context(|| format!("cannot create the journal {}", path.display()))?;
                let warning = format!(
                    "the watch journal {} could not be read ({first:#}); moved it to {} and \
                     started a new one (the first reconcile looks at everything)",
                    path.display(),
                    aside.display()
                );
                Ok((journal(conn), Some(warning)))
            }
        }
    }

    fn try_open(path: &Path) -> Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS dirty (rel TEXT PRIMARY KEY) WITHOUT ROWID;",
        )?;
        let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
        anyhow::ensure!(check == "ok", "integrity check failed: {check}");
        Ok(conn)
    }

    fn fail(&mut self, e: rusqlite::Error) {
        if self.broken.is_none() {
            self.broken = Some(format!(
                "the watch journal {} failed ({e}); going on without it: changes not yet \
                 mirrored are lost if s3ma is killed (the next start's reconcile finds most \
                 of them)",
                self.path.display()
            ));
        }
        self.conn = None;
    }

    /// Journals `rels` (with the clears waiting) in one commit: they
    /// survive a crash from the moment this returns.
    pub fn mark<'a>(&mut self, rels: impl IntoIterator<Item = &'a str>) {
        let clears = std::mem::take(&mut self.clears);
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let res = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut del = tx.prepare_cached("DELETE FROM dirty WHERE rel = ?1")?;
                for rel in &clears {
                    del.execute(params![rel])?;
                }
                let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO dirty (rel) VALUES (?1)")?;
                for rel in rels {
                    ins.execute(params![rel])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = res {
            self.fail(e);
        }
    }

    /// Takes `rel` off the journal (at the next commit).
    pub fn clear(&mut self, rel: &str) {
        if self.conn.is_some() {
            self.clears.push(rel.to_string());
        }
    }

    /// Commits the clears waiting.
    pub fn commit(&mut self) {
        if !self.clears.is_empty() {
            self.mark([]);
        }
    }

    /// Every journaled path, in order.
    pub fn all(&mut self) -> Vec<String> {
        let Some(conn) = self.conn.as_ref() else {
            return Vec::new();
        };
        match crate::state::journaled(conn) {
            Ok(v) => v,
            Err(e) => {
                self.fail(e);
                Vec::new()
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.commit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_a_reopen_and_clears_follow_at_the_next_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.journal");
        {
            let (mut j, w) = Journal::open(&path).expect("open");
            assert!(w.is_none());
            j.mark(["b/c.txt", "a.txt", "a.txt"]);
            j.clear("b/c.txt");
            // Not committed: a crash here keeps it.
            std::mem::forget(j);
        }
        let (mut j, _) = Journal::open(&path).expect("reopen");
        assert_eq!(j.all(), ["a.txt", "b/c.txt"]);
        j.clear("a.txt");
        j.commit();
        assert_eq!(j.all(), ["b/c.txt"]);
    }

    #[test]
    fn an_unreadable_journal_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.journal");
        std::fs::write(&path, b"not a database, not at all, no").expect("write");
        let (mut j, w) = Journal::open(&path).expect("open");
        assert!(w.expect("a warning").contains("could not be read"));
        j.mark(["a"]);
        assert_eq!(j.all(), ["a"]);
    }
}
