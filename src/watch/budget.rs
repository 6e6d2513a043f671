//! `--max-delete` for a daemon: at most N objects deleted within any
//! window of `--max-delete-window` (an hour by default).
//!
//! A deletion that would go over the cap is held, and so is every deletion
//! after it until the daemon restarts: a mass deletion (an `rm` in the
//! wrong directory, a deploy gone wrong) must not drain into the bucket at
//! N an hour while nobody looks. Held paths stay pending and journaled
//! (not done, not forgotten); a path whose file comes back is mirrored as
//! usual and no longer held. A restart re-checks the journal in its first
//! reconcile, which applies the cap (a higher one, if the operator raised
//! it) to all of them at once.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Budget {
    max: Option<u64>,
    window: Duration,
    /// Deletions done within the window: when, how many objects.
    done: VecDeque<(Instant, u64)>,
    /// Paths whose deletions are held, with how many objects each.
    held: BTreeMap<String, u64>,
    /// The cap was hit: nothing more is deleted until a restart.
    tripped: bool,
}

impl Budget {
    pub fn new(max: Option<u64>, window: Duration) -> Budget {
        Budget {
            max,
            window,
            done: VecDeque::new(),
            held: BTreeMap::new(),
            tripped: false,
        }
    }

    pub fn max(&self) -> Option<u64> {
        self.max
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Objects deleted within the window up to `now`.
    pub fn used(&mut self, now: Instant) -> u64 {
        while self
            .done
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= self.window)
        {
            self.done.pop_front();
        }
        self.done.iter().map(|(_, n)| n).sum()
    }

    /// How many more objects may be deleted now (`None`: no cap).
    pub fn remaining(&mut self, now: Instant) -> Option<u64> {
        let max = self.max?;
        if self.tripped {
            return Some(0);
        }
        Some(max.saturating_sub(self.used(now)))
    }

    /// May `n` objects be deleted now?
    pub fn allows(&mut self, n: u64, now: Instant) -> bool {
        self.remaining(now).is_none_or(|left| n <= left)
    }

    /// `n` objects are being deleted at `now`.
    pub fn spend(&mut self, n: u64, now: Instant) {
        if n > 0 && self.max.is_some() {
            self.done.push_back((now, n));
            // Keeps the queue as short as the window.
            self.used(now);
        }
    }

    /// `n` of the objects spent were not deleted after all (refused, or
    /// the server failed): they do not count.
    pub fn refund(&mut self, mut n: u64, now: Instant) {
        while n > 0 {
            let Some((_, last)) = self.done.back_mut() else {
                break;
            };
            let take = n.min(*last);
            *last -= take;
            n -= take;
            if *last == 0 {
                self.done.pop_back();
            }
        }
        self.used(now);
    }

    /// The deletions of `rel` (`n` objects) are held. Returns true when
    /// this is what tripped the cap.
    pub fn hold(&mut self, rel: &str, n: u64) -> bool {
        self.held.insert(rel.to_string(), n.max(1));
        !std::mem::replace(&mut self.tripped, true)
    }

    /// A reconcile found more deletions than the cap allows: held too.
    pub fn trip(&mut self) -> bool {
        !std::mem::replace(&mut self.tripped, true)
    }

    /// `rel` is no longer a held deletion (its file came back, or it was
    /// settled otherwise).
    pub fn release(&mut self, rel: &str) {
        self.held.remove(rel);
    }

    #[cfg(test)]
    pub fn is_held(&self, rel: &str) -> bool {
        self.held.contains_key(rel)
    }

    /// Objects whose deletion is held.
    pub fn held(&self) -> u64 {
        self.held.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_over_a_rolling_window_and_then_holds_everything() {
        let t = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut b = Budget::new(Some(100), hour);
        for i in 0..100 {
            assert!(b.allows(1, t + Duration::from_secs(i)));
            b.spend(1, t + Duration::from_secs(i));
        }
        assert!(!b.allows(1, t + Duration::from_secs(200)));
        // An hour after the first deletions, room again...
        assert!(b.allows(10, t + hour + Duration::from_secs(10)));
        // ...until the cap is hit: then nothing, however long it waits.
        assert!(b.hold("n42.html", 1));
        assert!(!b.hold("sub", 3), "tripped once");
        assert_eq!(b.held(), 4);
        assert!(!b.allows(1, t + 10 * hour));
        assert_eq!(b.remaining(t + 10 * hour), Some(0));
        b.release("sub");
        assert_eq!(b.held(), 1);
        assert!(b.is_held("n42.html"));
    }

    #[test]
    fn no_cap_allows_everything_and_remembers_nothing() {
        let mut b = Budget::new(None, Duration::from_secs(60));
        assert!(b.allows(1_000_000, Instant::now()));
        assert_eq!(b.remaining(Instant::now()), None);
        for _ in 0..1000 {
            b.spend(5, Instant::now());
        }
        assert!(b.done.is_empty());
    }

    #[test]
    fn deletions_that_failed_are_refunded() {
        let t = Instant::now();
        let mut b = Budget::new(Some(100), Duration::from_secs(3600));
        b.spend(50, t);
        b.spend(30, t);
        b.refund(40, t);
        assert_eq!(b.used(t), 40);
        assert!(b.allows(60, t));
        b.refund(1000, t);
        assert_eq!(b.used(t), 0);
    }
}
