//! `--bwlimit`: a cap on the bytes per second of every request body a run
//! sends, however many requests are in flight (one token bucket shared by
//! them all), with an optional timetable like rclone's
//! (`"08:00,2M 19:00,off"`: 2 MiB/s from 8:00, unlimited from 19:00, local
//! time).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::body::SdkBody;

use crate::config::parse_size;

/// Bytes per second from a time of day on (minutes after midnight);
/// `None` is unlimited.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    from: u32,
    rate: Option<u64>,
}

/// The shared bucket of one run's (or one destination's) uploads.
#[derive(Debug)]
pub struct Throttle {
    /// Sorted by `from`; one entry without a timetable.
    slots: Vec<Slot>,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may go now; below zero, how far the run is ahead.
    tokens: f64,
    at: Instant,
}

/// A rate: `10M`, `512K`, `1.5M` (binary, bytes per second), `off`.
fn parse_rate(s: &str) -> Result<Option<u64>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let n = parse_size(t)
        .map_err(|_| anyhow!("'{s}' is not a rate (bytes per second: 10M, 512K, or off)"))?;
    if n == 0 {
        bail!("a rate of 0 would send nothing; give a rate such as 1M, or off");
    }
    Ok(Some(n))
}

/// `HH:MM`.
fn parse_time(s: &str) -> Result<u32> {
    let bad = || anyhow!("'{s}' is not a time of day (HH:MM, 00:00 to 23:59)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl Throttle {
    /// Parses `10M` or a timetable `08:00,2M 19:00,off`; `None` when the
    /// limit is off at all times.
    pub fn parse(spec: &str) -> Result<Option<Arc<Throttle>>> {
        let mut slots = Vec::new();
        if spec.contains(',') {
            for entry in spec.split_whitespace() {
                let (time, rate) = entry.split_once(',').ok_or_else(|| {
                    anyhow!("'{entry}' in the timetable is not HH:MM,RATE (such as 08:00,2M)")
                })?;
                slots.push(Slot {
                    from: parse_time(time)?,
                    rate: parse_rate(rate)?,
                });
            }
            slots.sort_by_key(|s| s.from);
            if slots.windows(2).any(|w| w[0].from == w[1].from) {
                bail!("the timetable '{spec}' gives one time twice");
            }
        } else {
            slots.push(Slot {
                from: 0,
                rate: parse_rate(spec)?,
            });
        }
        if slots.iter().all(|s| s.rate.is_none()) {
            return Ok(None);
        }
        Ok(Some(Arc::new(Throttle {
            slots,
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
        })))
    }

    /// The rate at `minute` of the day: the last slot begun, or (before the
    /// first) the last of the day before.
    fn rate_at(&self, minute: u32) -> Option<u64> {
        self.slots
            .iter()
            .rev()
            .find(|s| s.from <= minute)
            .or(self.slots.last())
            .and_then(|s| s.rate)
    }

    /// The rate now, by local time.
    fn rate_now(&self) -> Option<u64> {
        if self.slots.len() == 1 {
            return self.slots[0].rate;
        }
        self.rate_at(local_minute())
    }

    /// How long a body must wait before it may send more; `None` when it
    /// may now.
    fn wait(&self) -> Option<Duration> {
        let rate = self.rate_now()? as f64;
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // At most a second's worth saved up: a burst, not a loophole.
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        (b.tokens < 0.0).then(|| Duration::from_secs_f64(-b.tokens / rate))
    }

    /// How many bytes one frame may carry at the rate now: an eighth of a
    /// second's worth (at least 1 KiB, at most 256 KiB), so that at a low
    /// rate bytes still flow every fraction of a second (the SDK takes a
    /// body that sends nothing for seconds for a stalled one).
    fn piece(&self) -> usize {
        let rate = self.rate_now().unwrap_or(u64::MAX);
        (rate / 8).clamp(1 << 10, 256 << 10) as usize
    }

    /// `n` bytes went out.
    fn spend(&self, n: usize) {
        if self.rate_now().is_none() {
            return;
        }
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.tokens -= n as f64;
    }

    /// `body`, sent no faster than the limit allows.
    pub fn limit(self: &Arc<Self>, body: ByteStream) -> ByteStream {
        let throttle = self.clone();
        body.map(move |inner| {
            SdkBody::from_body_1_x(Limited {
                inner,
                throttle: throttle.clone(),
                sleep: None,
                rest: bytes::Bytes::new(),
            })
        })
    }
}

/// Minutes after local midnight now.
fn local_minute() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as libc::time_t);
    // SAFETY: localtime_r writes the broken-down time into `tm`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if ok {
        (tm.tm_hour as u32) * 60 + tm.tm_min as u32
    } else {
        ((now / 60) % 1440) as u32
    }
}

/// A request body that waits for the bucket before each piece of a chunk.
struct Limited {
    inner: SdkBody,
    throttle: Arc<Throttle>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// What the inner body gave that has not gone out yet.
    rest: bytes::Bytes,
}

impl http_body::Body for Limited {
    type Data = bytes::Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            match self.throttle.wait() {
                Some(d) => self.sleep = Some(Box::pin(tokio::time::sleep(d))),
                None => break,
            }
        }
        if self.rest.is_empty() {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.rest = data,
                    // Trailers pass as they are.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            }
        }
        let n = self.rest.len().min(self.throttle.piece());
        let piece = self.rest.split_to(n);
        self.throttle.spend(piece.len());
        Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = http_body::Body::size_hint(&self.inner);
        let rest = self.rest.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_timetables_parse() {
        let t = Throttle::parse("10M").expect("valid").expect("limited");
        assert_eq!(t.rate_at(0), Some(10 << 20));
        assert!(Throttle::parse("off").expect("valid").is_none());
        let t = Throttle::parse("08:00,2M 19:00,off 23:30,512K")
            .expect("valid")
            .expect("limited");
        assert_eq!(t.rate_at(8 * 60), Some(2 << 20));
        assert_eq!(t.rate_at(12 * 60), Some(2 << 20));
        assert_eq!(t.rate_at(20 * 60), None);
        assert_eq!(t.rate_at(23 * 60 + 45), Some(512 << 10));
        // Before the first slot: the day before's last.
        assert_eq!(t.rate_at(60), Some(512 << 10));
        for bad in [
            "fast",
            "0",
            "25:00,1M",
            "8:0,1M",
            "08:00",
            "08:00,1M 08:00,2M",
            "08:00,x",
        ] {
            assert!(Throttle::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bucket_makes_senders_wait_for_what_they_spent() {
        let t = Throttle::parse("1M").expect("valid").expect("limited");
        assert_eq!(t.wait(), None);
        t.spend(2 << 20);
        let w = t.wait().expect("over the limit");
        assert!(
            w > Duration::from_millis(1900) && w <= Duration::from_secs(2),
            "{w:?}"
        );
    }
}
