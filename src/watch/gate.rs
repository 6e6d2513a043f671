//! Waiting after failures: the gate that holds all work back after a
//! server error, the backoff of one failing path, and the rate limit on
//! repeated messages.
//!
//! Waits grow exponentially and carry jitter (a random part of up to half
//! the wait), so a fleet of daemons that lost the same endpoint does not
//! come back to it in lockstep.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Longest pause after server errors.
pub const MAX_GATE: Duration = Duration::from_secs(60);
/// Longest delay for a path that keeps failing.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// The same message is printed at most once per this long.
const REPEAT_QUIET: Duration = Duration::from_secs(60);

/// A small random source for jitter (xorshift, seeded from the clock and
/// the process id); not for anything that needs real randomness.
#[derive(Debug)]
pub struct Jitter(u64);

impl Default for Jitter {
    fn default() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }
}

impl Jitter {
    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 {
            0
        } else {
            self.0 % n
        }
    }

    /// `wait` less a random part of up to half of it.
    pub fn spread(&mut self, wait: Duration) -> Duration {
        let ms = wait.as_millis() as u64;
        Duration::from_millis(ms - self.below(ms / 2 + 1))
    }
}

/// Capped exponential backoff: 0.5 s, 1 s, 2 s, … up to `cap`.
pub fn backoff(attempts: u32, cap: Duration) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempts.min(16))).min(cap)
}

/// While closed, no work is started.
#[derive(Debug, Default)]
pub struct Gate {
    until: Option<Instant>,
    /// Closings in a row without a success.
    steps: u32,
    jitter: Jitter,
}

impl Gate {
    /// Is work held back at `now`?
    pub fn closed(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| u > now)
    }

    pub fn until(&self) -> Option<Instant> {
        self.until.filter(|u| *u > Instant::now())
    }

    /// A server error: closes the gate for longer each time in a row, and
    /// returns how long (a failure of the same moment, while the gate is
    /// closed already, does not lengthen it).
    pub fn close(&mut self) -> Duration {
        let now = Instant::now();
        if let Some(until) = self.until.filter(|u| *u > now) {
            return until - now;
        }
        let wait = self.jitter.spread(backoff(self.steps, MAX_GATE));
        self.steps = self.steps.saturating_add(1);
        self.until = Some(now + wait);
        wait
    }

    /// A request went through: the next failure starts the backoff anew.
    pub fn open(&mut self) {
        self.steps = 0;
        self.until = None;
    }

    /// The retry delay of a path that failed `attempts` times, jittered.
    pub fn retry_after(&mut self, attempts: u32) -> Duration {
        self.jitter.spread(backoff(attempts, MAX_RETRY))
    }
}

/// Prints a repeated message at most once per [`REPEAT_QUIET`].
#[derive(Default)]
pub struct Quiet(HashMap<String, (Instant, u32)>);

impl Quiet {
    /// The text to print now, if any (with how often it was held back).
    pub fn pass(&mut self, msg: &str) -> Option<String> {
        let now = Instant::now();
        match self.0.get_mut(msg) {
            Some((last, held)) if now.duration_since(*last) < REPEAT_QUIET => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let text = if *held > 0 {
                    format!("{msg} (repeated {held} more times)")
                } else {
                    msg.to_string()
                };
                *last = now;
                *held = 0;
                Some(text)
            }
            None => {
                if self.0.len() > 10_000 {
                    self.0.clear();
                }
                self.0.insert(msg.to_string(), (now, 0));
                Some(msg.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_backs_off_with_jitter_and_reopens() {
        let mut g = Gate::default();
        let first = g.close();
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        assert!(g.closed(Instant::now()));
        // Closed already: not lengthened by a failure of the same moment.
        assert!(g.close() <= first);
        g.until = Some(Instant::now());
        let second = g.close();
        assert!(second >= Duration::from_millis(500) && second <= Duration::from_secs(1));
        for _ in 0..20 {
            g.until = None;
            assert!(g.close() <= MAX_GATE);
        }
        g.open();
        assert!(!g.closed(Instant::now()));
        assert!(g.close() <= Duration::from_millis(500));
    }

    #[test]
    fn jitter_spreads_waits() {
        let mut j = Jitter(42);
        let waits: std::collections::BTreeSet<_> =
            (0..50).map(|_| j.spread(Duration::from_secs(8))).collect();
        assert!(waits.len() > 10, "{waits:?}");
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_secs(4) && *w <= Duration::from_secs(8)));
    }

    #[test]
    fn repeated_messages_are_held_back() {
        let mut q = Quiet::default();
        assert!(q.pass("x").is_some());
        assert!(q.pass("x").is_none());
        assert!(q.pass("y").is_some());
    }
}
