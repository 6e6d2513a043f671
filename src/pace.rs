//! How many requests are in flight, when `--concurrency` is not given: it
//! starts at 32 and follows what the link and the server give.
//!
//! Four times a second the governor looks at how many request attempts were
//! answered and whether every permit was in use. While the limit is what
//! holds the run back (every permit taken), it tries more: twice as many
//! until a try first fails to pay, a quarter more after that. A try that
//! does not raise the rate of answers by a tenth is taken back, and the
//! next is not made for half a minute. A 503 or a SlowDown halves the
//! limit at once (not below 4), and no try is made for ten seconds after.
//! The limit never exceeds what the open-file limit allows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use tokio::sync::Semaphore;

/// Counts of request attempts, kept by [`Counting`] for one connection.
#[derive(Debug, Default)]
pub struct Signals {
    answered: AtomicU64,
    throttled: AtomicU64,
}

impl Signals {
    fn take(&self) -> (u64, u64) {
        (
            self.answered.swap(0, Ordering::Relaxed),
            self.throttled.swap(0, Ordering::Relaxed),
        )
    }
}

/// The interceptor that counts every attempt's answer.
#[derive(Debug)]
pub struct Counting(pub Arc<Signals>);

impl Intercept for Counting {
    fn name(&self) -> &'static str {
        "s3ma-pace"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(r) = context.response() {
            // S3 says SlowDown with a 503; some providers use 429.
            let status = r.status().as_u16();
            if status == 503 || status == 429 {
                self.0.throttled.fetch_add(1, Ordering::Relaxed);
            }
            self.0.answered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// How long the governor looks before it decides.
pub const WINDOW: Duration = Duration::from_millis(250);

/// Windows in `secs` seconds.
const fn windows(secs: u32) -> u32 {
    secs * 1000 / WINDOW.as_millis() as u32
}

/// One window's worth of what the governor saw.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Attempts answered (any status).
    pub answered: u64,
    /// Of them, 503 or 429.
    pub throttled: u64,
    /// Every permit was taken for most of the window.
    pub saturated: bool,
    pub secs: f64,
}

/// The decisions, without clocks or semaphores.
#[derive(Debug)]
pub struct Pace {
    limit: usize,
    min: usize,
    max: usize,
    /// A try under way: the limit and rate before it.
    trying: Option<(usize, f64)>,
    /// Windows before the next try may be made.
    wait: u32,
    /// No try has failed yet, nor the server slowed us: tries double.
    doubling: bool,
    /// Windows since the last slow-down: the requests in flight take a
    /// while to fall to a new limit, and the 503s of that while are no
    /// news.
    since_slow: u32,
}

/// What changed, and why, for `-v`.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub from: usize,
    pub to: usize,
    pub why: &'static str,
}

impl Pace {
    pub fn new(start: usize, max: usize) -> Pace {
        let max = max.max(1);
        Pace {
            limit: start.clamp(1, max),
            min: 4.min(max),
            max,
            trying: None,
            wait: 0,
            doubling: true,
            since_slow: u32::MAX,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn set(&mut self, to: usize, why: &'static str) -> Option<Change> {
        let to = to.clamp(self.min, self.max);
        let from = std::mem::replace(&mut self.limit, to);
        (from != to).then_some(Change { from, to, why })
    }

    /// The limit for the next window.
    pub fn next(&mut self, s: Sample) -> Option<Change> {
        self.since_slow = self.since_slow.saturating_add(1);
        if s.throttled > 0 && self.since_slow <= windows(1) {
            return None;
        }
        if s.throttled > 0 {
            self.since_slow = 0;
            self.trying = None;
            self.doubling = false;
            self.wait = windows(10);
            return self.set(self.limit / 2, "the server asked to slow down");
        }
        let rate = s.answered as f64 / s.secs.max(0.001);
        if let Some((before, then)) = self.trying.take() {
            if rate >= then * 1.1 {
                // It paid: the next try may follow at once.
            } else {
                self.wait = windows(30);
                self.doubling = false;
                return self.set(before, "more requests at once did not answer faster");
            }
        }
        if self.wait > 0 {
            self.wait -= 1;
            return None;
        }
        if !s.saturated || self.limit >= self.max || s.answered == 0 {
            return None;
        }
        self.trying = Some((self.limit, rate));
        let step = if self.doubling {
            self.limit
        } else {
            self.limit / 4
        };
        let to = (self.limit + step).max(self.limit + 1);
        self.set(to, "every request slot was busy")
    }
}

/// Permits being taken back from the run.
type Shrink = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
            > + Send,
    >,
>;

/// Follows [`Pace`] on `requests` until dropped: grows it with new
/// permits, and shrinks it by taking permits back as they come free.
pub struct Governor {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Governor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Governor {
    /// `say` gets each change, for `-v`.
    pub fn start(
        requests: Arc<Semaphore>,
        signals: Arc<Signals>,
        mut pace: Pace,
        say: impl Fn(&Change) + Send + 'static,
    ) -> Governor {
        let task = tokio::spawn(async move {
            const TICKS: u32 = 5;
            const TICK: Duration = Duration::from_millis(WINDOW.as_millis() as u64 / TICKS as u64);
            // The permits that exist, taken or not.
            let mut issued = pace.limit();
            // Taking back permits after a shrink: a request for them that
            // waits in line with the run's own, and so gets each permit as
            // it is given back until it has them all. The requests in
            // flight fall to the new limit as they finish.
            let mut shrink: Option<(usize, Shrink)> = None;
            let _ = signals.take();
            // An idle daemon is looked at once a second, not twenty times.
            let mut tick = TICK;
            loop {
                let mut busy = 0;
                let start = tokio::time::Instant::now();
                for _ in 0..TICKS {
                    let sleep = tokio::time::sleep(tick);
                    let got = match &mut shrink {
                        Some((_, taking)) => tokio::select! {
                            _ = sleep => None,
                            got = taking => Some(got),
                        },
                        None => {
                            sleep.await;
                            None
                        }
                    };
                    if let Some(got) = got {
                        if let (Some((n, _)), Ok(permits)) = (shrink.take(), got) {
                            permits.forget();
                            issued -= n;
                        }
                    }
                    if requests.available_permits() == 0 {
                        busy += 1;
                    }
                }
                let (answered, throttled) = signals.take();
                if answered == 0 && busy == 0 {
                    tick = Duration::from_secs(1).max(TICK);
                    continue;
                }
                tick = TICK;
                let sample = Sample {
                    answered,
                    throttled,
                    saturated: busy * 2 > TICKS,
                    secs: start.elapsed().as_secs_f64(),
                };
                let Some(change) = pace.next(sample) else {
                    continue;
                };
                // A shrink under way gives back what it took so far.
                shrink = None;
                let to = change.to;
                if to > issued {
                    requests.add_permits(to - issued);
                    issued = to;
                } else if to < issued {
                    let n = issued - to;
                    let taking = requests.clone().acquire_many_owned(n as u32);
                    shrink = Some((n, Box::pin(taking)));
                }
                say(&change);
            }
        });
        Governor { task }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(answered: u64) -> Sample {
        Sample {
            answered,
            throttled: 0,
            saturated: true,
            secs: WINDOW.as_secs_f64(),
        }
    }

    #[test]
    fn grows_while_answers_come_faster_and_takes_back_a_try_that_does_not() {
        let mut p = Pace::new(32, 256);
        assert_eq!(p.next(busy(100)).map(|c| c.to), Some(64));
        // 64 in flight answered 130 a window: worth it, try again.
        assert_eq!(p.next(busy(130)).map(|c| c.to), Some(128));
        // No faster at 128: back to 64, and no try for 30 seconds.
        assert_eq!(p.next(busy(131)).map(|c| c.to), Some(64));
        for _ in 0..windows(30) {
            assert_eq!(p.next(busy(131)), None);
        }
        // From now on a quarter more at a time.
        assert_eq!(p.next(busy(131)).map(|c| c.to), Some(80));
        assert_eq!(p.next(busy(150)).map(|c| c.to), Some(100));
    }

    #[test]
    fn an_idle_limit_is_not_raised() {
        let mut p = Pace::new(32, 256);
        let idle = Sample {
            saturated: false,
            ..busy(500)
        };
        for _ in 0..100 {
            assert_eq!(p.next(idle), None);
        }
        assert_eq!(p.limit(), 32);
    }

    #[test]
    fn slow_down_halves_and_the_bounds_hold() {
        let mut p = Pace::new(32, 40);
        let slow = Sample {
            throttled: 3,
            ..busy(50)
        };
        assert_eq!(p.next(slow).map(|c| c.to), Some(16));
        // The 503s of the next second are the same burst's.
        for _ in 0..windows(1) {
            assert_eq!(p.next(slow), None);
        }
        assert_eq!(p.next(slow).map(|c| c.to), Some(8));
        for _ in 0..windows(1) {
            assert_eq!(p.next(slow), None);
        }
        assert_eq!(p.next(slow).map(|c| c.to), Some(4));
        for _ in 0..windows(1) {
            assert_eq!(p.next(slow), None);
        }
        assert_eq!(p.next(slow), None, "never below 4");
        // Ten quiet seconds, then tries again, up to the cap.
        for _ in 0..windows(10) {
            assert_eq!(p.next(busy(10)), None);
        }
        let mut rate = 10;
        let mut steps = Vec::new();
        while let Some(c) = p.next(busy(rate)) {
            steps.push(c.to);
            rate *= 2;
        }
        // After a slow-down, never doubling again.
        assert_eq!(steps, [5, 6, 7, 8, 10, 12, 15, 18, 22, 27, 33, 40]);
        assert_eq!(p.limit(), 40, "the cap");
        assert_eq!(Pace::new(32, 2).limit(), 2);
    }
}
