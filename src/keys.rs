//! Mapping between local relative paths and S3 keys.
//!
//! Invariants: a prefix is either empty or ends with exactly one `/`; a key
//! is `prefix + relative path` with `/` separators, valid UTF-8 and at most
//! [`MAX_KEY_BYTES`] bytes. Names that cannot be mapped are rejected with a
//! reason, never mangled.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Result};

/// S3's limit on the length of an object key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// A bucket and a key prefix (`""` or ending with `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    pub prefix: String,
}

impl Location {
    /// Builds a location, treating the prefix as a folder (`site` and
    /// `site/` are the same). A prefix that no tool could map back to a
    /// path (a leading `/`, `.` or `..` segments, `a//b`) is refused.
    pub fn new(bucket: &str, prefix: &str) -> Result<Self> {
        validate_bucket(bucket)?;
        check_prefix(bucket, prefix)?;
        Ok(Location {
            bucket: bucket.to_string(),
            prefix: normalize_prefix(prefix),
        })
    }

    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<Self> {
        let Some(rest) = url.strip_prefix("s3://") else {
            bail!("'{url}' is not an S3 location: write it as s3://BUCKET[/PREFIX]");
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("'{url}' names no bucket: write it as s3://BUCKET[/PREFIX]");
        }
        Location::new(bucket, prefix)
    }

    /// The key for a path relative to the mirrored directory.
    pub fn key_for(&self, rel: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + rel.len());
        key.push_str(&self.prefix);
        key.push_str(rel);
        key
    }

    /// The relative path for a key under this prefix.
    pub fn rel_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// `""` → `""`; `a`, `a/`, `a//` → `a/` (a leading `/` is refused before).
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// What no bucket name can be on any service: it would not survive as one
/// segment of a path-style URL.
fn validate_bucket(bucket: &str) -> Result<()> {
    if bucket.is_empty() {
        bail!("the bucket name is empty");
    }
    if bucket.len() > 255
        || bucket == "."
        || bucket == ".."
        || bucket
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        bail!(
            "'{bucket}' is not a valid bucket name (no spaces, control characters or '/', at \
             most 255 characters)"
        );
    }
    Ok(())
}

/// The name rules of AWS S3's general purpose buckets, which virtual-host
/// addressing also needs on other services: 3 to 63 lowercase letters,
/// digits, `-` and `.`, a letter or digit at each end, not an IP address.
/// `None` when the name keeps them, else what is wrong.
pub fn bucket_name_problem(bucket: &str) -> Option<String> {
    let len = bucket.len();
    if !(3..=63).contains(&len) {
        return Some(format!(
            "it is {len} characters long; a bucket name has 3 to 63"
        ));
    }
    if let Some(c) = bucket
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Some(format!(
            "it holds '{c}'; only lowercase letters, digits, '-' and '.' are allowed"
        ));
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge(bucket.chars().next()) || !edge(bucket.chars().last()) {
        return Some("it must begin and end with a letter or digit".into());
    }
    if bucket.contains("..") {
        return Some("it holds two periods in a row".into());
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return Some("it is formatted as an IP address".into());
    }
    for reserved in ["xn--", "sthree-", "amzn-s3-demo-"] {
        if bucket.starts_with(reserved) {
            return Some(format!("names starting with '{reserved}' are reserved"));
        }
    }
    for reserved in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
        if bucket.ends_with(reserved) {
            return Some(format!("names ending with '{reserved}' are reserved"));
        }
    }
    None
}

/// A prefix must name a folder every tool can map back to a path.
fn check_prefix(bucket: &str, prefix: &str) -> Result<()> {
    if prefix.starts_with('/') {
        let rest = prefix.trim_start_matches('/');
        bail!(
            "the prefix '{prefix}' starts with '/', which would make keys with an empty first \
             segment; write s3://{bucket}/{rest} instead"
        );
    }
    let inner = prefix.trim_end_matches('/');
    if inner.is_empty() {
        return Ok(());
    }
    if let Some(seg) = inner
        .split('/')
        .find(|s| s.is_empty() || *s == "." || *s == "..")
    {
        // What the segments say as a path: `.` and empty ones dropped,
        // `..` taking the one before away.
        let mut clean: Vec<&str> = Vec::new();
        for s in inner.split('/') {
            match s {
                "" | "." => {}
                ".." => {
                    clean.pop();
                }
                s => clean.push(s),
            }
        }
        let what = if seg.is_empty() {
            "an empty segment ('//')".to_string()
        } else {
            format!("a '{seg}' segment")
        };
        bail!(
            "the prefix '{prefix}' has {what}, which no tool can restore to a path (aws-cli \
             refuses such keys, rclone skips them); write the folder without it, such as \
             s3://{bucket}/{}",
            clean.join("/")
        );
    }
    Ok(())
}

/// Why a local name cannot become a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    NotUtf8,
    TooLong(usize),
    /// A control character that XML 1.0 listings cannot carry intact.
    Control(char),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotUtf8 => write!(
                f,
                "the name is not valid UTF-8 and cannot be an S3 key; rename it (e.g. with convmv)"
            ),
            KeyError::Control(c) => write!(
                f,
                "the name contains the control character U+{:04X}, which S3 listings (XML) \
                 cannot carry intact; rename it",
                *c as u32
            ),
            KeyError::TooLong(n) => write!(
                f,
                "the key would be {n} bytes, over S3's limit of {MAX_KEY_BYTES}; shorten the path"
            ),
        }
    }
}

/// Converts a relative path (as the walk yields it) to its `/`-separated
/// UTF-8 form and checks the full key length against the prefix.
pub fn rel_key(rel: &Path, prefix: &str) -> Result<String, KeyError> {
    let mut out = String::new();
    for (i, comp) in rel.components().enumerate() {
        let name: &OsStr = comp.as_os_str();
        let Some(s) = name.to_str() else {
            return Err(KeyError::NotUtf8);
        };
        // Tab and newline survive XML; carriage return is normalised away
        // and the rest are not XML 1.0 characters at all.
        if let Some(c) = s
            .chars()
            .find(|c| c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\x7f'))
        {
            return Err(KeyError::Control(c));
        }
        if i > 0 {
            out.push('/');
        }
        out.push_str(s);
    }
    let total = prefix.len() + out.len();
    if total > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(total));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    #[test]
    fn prefix_is_a_folder() {
        for (input, want) in [
            ("", ""),
            ("site", "site/"),
            ("site/", "site/"),
            ("site//", "site/"),
            ("a/b", "a/b/"),
        ] {
            assert_eq!(normalize_prefix(input), want, "input {input:?}");
        }
    }

    #[test]
    fn prefixes_that_no_tool_can_restore_are_refused() {
        for (url, want) in [
            ("s3://b/../x", "a '..' segment"),
            ("s3://b/a/./b/../c", "a '.' segment"),
            ("s3://b/a//c", "an empty segment"),
            ("s3://b//x", "starts with '/'"),
            ("s3://b/.", "a '.' segment"),
        ] {
            let err = Location::parse(url).expect_err(url);
            assert!(err.to_string().contains(want), "{url}: {err}");
        }
        let err = Location::parse("s3://b/a/./b/../c").expect_err("dots");
        assert!(err.to_string().contains("such as s3://b/a/c"), "{err}");
        let err = Location::parse("s3://b//x").expect_err("leading slash");
        assert!(err.to_string().contains("write s3://b/x instead"), "{err}");
        for ok in ["s3://b/a.b/..c/d..", "s3://b/site//", "s3://b/"] {
            assert!(Location::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn aws_bucket_rules() {
        for ok in ["abc", "my-site.example.com", "a1-b2", &"x".repeat(63)] {
            assert_eq!(bucket_name_problem(ok), None, "{ok}");
        }
        for (bad, want) in [
            ("BAD", "'B'"),
            ("b", "1 characters long"),
            ("under_score", "'_'"),
            ("-dash", "begin and end"),
            ("a..b", "two periods"),
            ("192.168.1.1", "IP address"),
            ("xn--abc", "reserved"),
            ("site-s3alias", "reserved"),
        ] {
            let problem = bucket_name_problem(bad).unwrap_or_default();
            assert!(problem.contains(want), "{bad}: {problem}");
        }
        assert!(Location::new("..", "").is_err());
        assert!(Location::new("a\u{1}b", "").is_err());
    }

    #[test]
    fn parses_s3_urls() {
        let l = Location::parse("s3://b/site").expect("valid");
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("b", "site/"));
        let l = Location::parse("s3://b").expect("valid");
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("b", ""));
        assert_eq!(
            Location::parse("s3://b/site/").expect("valid"),
            Location::parse("s3://b/site").expect("valid")
        );
        assert!(Location::parse("b/site").is_err());
        assert!(Location::parse("s3:///x").is_err());
    }

    #[test]
    fn keys_join_with_slash_and_keep_special_characters() {
        let rel = PathBuf::from("dir/a b+%#?'&=.txt");
        assert_eq!(rel_key(&rel, "p/").expect("ok"), "dir/a b+%#?'&=.txt");
        let l = Location::new("b", "p").expect("valid");
        assert_eq!(l.key_for("x/y"), "p/x/y");
        assert_eq!(l.rel_of("p/x/y"), Some("x/y"));
        assert_eq!(l.rel_of("q/x"), None);
    }

    #[test]
    fn rejects_control_characters_xml_cannot_carry() {
        assert_eq!(rel_key(Path::new("a\rb"), ""), Err(KeyError::Control('\r')));
        assert_eq!(
            rel_key(Path::new("d\x01/x"), ""),
            Err(KeyError::Control('\u{1}'))
        );
        assert!(rel_key(Path::new("tab\there/new\nline"), "").is_ok());
    }

    #[test]
    fn rejects_non_utf8_and_long_keys() {
        let bad = PathBuf::from(OsStr::from_bytes(b"caf\xe9.txt"));
        assert_eq!(rel_key(&bad, ""), Err(KeyError::NotUtf8));
        let long = PathBuf::from("x".repeat(1020));
        assert_eq!(rel_key(&long, "pre/").map(|k| k.len()), Ok(1020));
        let longer = PathBuf::from("x".repeat(1021));
        assert_eq!(rel_key(&longer, "pre/"), Err(KeyError::TooLong(1025)));
    }
}
