//! Which keys the tasks in flight write and read.
//!
//! Invariant: no two tasks in flight write one key, and no task writes a
//! key another one reads (a server-side copy's source). A task is started
//! only when its [`Claim`] is free ([`Claims::free`]); it holds the claim
//! until it is joined. So a rename's copy never reads an object that an
//! upload, another copy or a deletion is changing at the same moment, and
//! a deletion never races an upload of the same key.

use std::collections::HashMap;

/// The keys one task writes (uploads, copies to, deletes) and reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Claim {
    pub writes: Vec<String>,
    pub reads: Vec<String>,
}

impl Claim {
    #[cfg(test)]
    pub fn write(key: &str) -> Claim {
        Claim {
            writes: vec![key.to_string()],
            reads: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Claims {
    writes: HashMap<String, usize>,
    reads: HashMap<String, usize>,
}

impl Claims {
    /// May a task write `key` now?
    pub fn writable(&self, key: &str) -> bool {
        !self.writes.contains_key(key) && !self.reads.contains_key(key)
    }

    /// May a task read `key` now?
    pub fn readable(&self, key: &str) -> bool {
        !self.writes.contains_key(key)
    }

    /// Could a task with this claim start now?
    pub fn free(&self, claim: &Claim) -> bool {
        claim.writes.iter().all(|k| self.writable(k))
            && claim.reads.iter().all(|k| self.readable(k))
    }

    pub fn take(&mut self, claim: &Claim) {
        debug_assert!(self.free(claim), "claimed twice: {claim:?}");
        for k in &claim.writes {
            *self.writes.entry(k.clone()).or_default() += 1;
        }
        for k in &claim.reads {
            *self.reads.entry(k.clone()).or_default() += 1;
        }
    }

    pub fn release(&mut self, claim: &Claim) {
        for (map, keys) in [
            (&mut self.writes, &claim.writes),
            (&mut self.reads, &claim.reads),
        ] {
            for k in keys {
                if let Some(n) = map.get_mut(k) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(k);
                    }
                }
            }
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.reads.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_and_a_write_of_its_source_exclude_each_other() {
        let mut c = Claims::default();
        let copy = Claim {
            writes: vec!["f1".into()],
            reads: vec!["f2".into()],
        };
        let upload = Claim::write("f2");
        assert!(c.free(&copy) && c.free(&upload));
        c.take(&copy);
        assert!(!c.free(&upload), "f2 is being read");
        assert!(!c.free(&Claim::write("f1")), "f1 is being written");
        // Two copies may read one source.
        assert!(c.free(&Claim {
            writes: vec!["f3".into()],
            reads: vec!["f2".into()],
        }));
        c.release(&copy);
        assert!(c.free(&upload));
        c.take(&upload);
        assert!(!c.free(&copy), "the source is being written");
        c.release(&upload);
        assert!(c.is_empty());
    }
}
