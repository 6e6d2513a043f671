//! Sizes and durations as users write them, in flags and in the file.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

/// A duration written as seconds or a string such as `"15m"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(u64),
    Text(String),
}

/// A size written as a number of bytes or a string such as `"64MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    pub fn bytes(&self) -> Result<u64> {
        match self {
            SizeValue::Bytes(n) => Ok(*n),
            SizeValue::Text(s) => parse_size(s),
        }
    }
}

/// Parses `5242880`, `64M`, `64MiB`, `1.5G`, `512k`. Units are binary
/// (`M` and `MB` are MiB, as in rsync and rclone).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("'{s}' is not a size (examples: 5242880, 64MiB, 1G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => bail!("'{s}' has an unknown unit (use K, M, G, T, KiB, MiB, GiB or TiB)"),
    };
    Ok((n * mult as f64) as u64)
}

/// Parses `90`, `90s`, `15m`, `1h`, `1d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("'{s}' is not a duration; write it like 30s, 15m, 1h or 1d"))?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => bail!("unknown unit '{other}' in '{s}'; use s, m, h or d"),
    };
    n.checked_mul(mult)
        .filter(|secs| *secs <= 366 * 86400)
        .map(Duration::from_secs)
        .ok_or_else(|| anyhow!("'{s}' is too long; at most a year"))
}

/// Seconds from a flag or key, for timeouts.
pub fn seconds(name: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        bail!("{name} must be a number of seconds above 0 and at most 86400, not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// A duration from a flag, else from a config key, else the default.
pub fn duration_setting(
    flag: &Option<String>,
    flag_name: &str,
    key: &Option<DurationValue>,
    key_name: &str,
    default: Duration,
) -> Result<Duration> {
    match (flag, key) {
        (Some(s), _) => parse_duration(s).with_context(|| format!("in --{flag_name}")),
        (None, Some(DurationValue::Seconds(n))) => Ok(Duration::from_secs(*n)),
        (None, Some(DurationValue::Text(s))) => {
            parse_duration(s).with_context(|| format!("in the config key \"{key_name}\""))
        }
        (None, None) => Ok(default),
    }
}

/// A size from a flag, else from a config key, else the default.
pub fn size_setting(
    flag: &Option<String>,
    flag_name: &str,
    key: &Option<SizeValue>,
    key_name: &str,
    default: u64,
) -> Result<u64> {
    match (flag, key) {
        (Some(s), _) => parse_size(s).with_context(|| format!("in --{flag_name}")),
        (None, Some(v)) => v
            .bytes()
            .with_context(|| format!("in the config key \"{key_name}\"")),
        (None, None) => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, want) in [
            ("0", 0),
            ("90", 90),
            ("30s", 30),
            ("15m", 900),
            ("1h", 3600),
            ("2d", 172_800),
        ] {
            assert_eq!(
                parse_duration(s).expect(s),
                Duration::from_secs(want),
                "{s}"
            );
        }
        for bad in ["", "h", "1x", "1.5h", "-1s", "99999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        for (s, want) in [
            ("5242880", 5_242_880),
            ("64MiB", 64 << 20),
            ("64M", 64 << 20),
            ("64MB", 64 << 20),
            ("1.5G", 3 << 29),
            ("512k", 512 << 10),
        ] {
            assert_eq!(parse_size(s).expect(s), want, "{s}");
        }
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
