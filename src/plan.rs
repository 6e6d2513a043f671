//! Deciding what to do with each file: pure logic, no I/O.
//!
//! Change detection never depends on server time: it compares size and the
//! file's own mtime with what the state database (or the object's metadata)
//! says was uploaded, and falls back to MD5 only when those differ or are
//! unknown. A same-content file with a new mtime is not uploaded again.

use std::collections::HashMap;

use crate::scan::LocalFile;
use crate::state::Record;
use crate::store::ObjectInfo;

/// rclone's metadata names, so `rclone check` and s3ma agree.
pub const META_MTIME: &str = "mtime";
pub const META_MD5: &str = "md5chksum";

/// First decision, from the listing and the state database alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Unchanged: nothing to send, nothing to read.
    Skip,
    /// Upload, with the reason shown at `-v`.
    Upload(&'static str),
    /// Same size but mtime differs or is unknown: find the remote MD5
    /// (`head` says whether a HEAD request is needed) and compare.
    Verify { head: bool },
    /// Size and mtime match the state, but something (a watch event) says
    /// the content may have changed: hash and compare with the state's MD5.
    Hash,
    /// `--checksum`: hash the file and compare with the object's MD5 as
    /// the server tells it (listing ETag or HEAD), trusting neither the
    /// state nor the object's mtime metadata.
    Checksum,
    /// Unchanged, but the header rules for it changed: the object gets
    /// the new headers by a copy onto itself.
    Restyle,
}

/// What the first pass decides for one local file.
pub fn decide(local: &LocalFile, remote: Option<&ObjectInfo>, state: Option<&Record>) -> Decision {
    let Some(remote) = remote else {
        return Decision::Upload("new");
    };
    if remote.size != local.size {
        return Decision::Upload("size changed");
    }
    let Some(state) = state.filter(|s| state_matches_remote(s, remote)) else {
        return Decision::Verify { head: true };
    };
    if state.mtime_ns == local.mtime_ns {
        Decision::Skip
    } else {
        Decision::Verify { head: false }
    }
}

/// Is the state row still a description of the remote object? (Someone
/// else may have replaced it; a differing ETag or size says so.)
pub fn state_matches_remote(state: &Record, remote: &ObjectInfo) -> bool {
    state.size == remote.size
        && match (&state.etag, &remote.etag) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

/// What the remote object says about itself, from HEAD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteFacts {
    pub md5: Option<[u8; 16]>,
    /// The file mtime recorded in metadata, and the precision of that
    /// record in nanoseconds (1 for rclone's format, 1e9 for node-s3ma's
    /// HTTP date).
    pub mtime: Option<(i64, i64)>,
    /// The object's metadata describes it: `md5chksum` is there and does
    /// not contradict a plain-MD5 ETag. When it does not, and the bytes
    /// are found right, the metadata wants repairing.
    pub metadata_whole: bool,
}

impl RemoteFacts {
    /// The object's MD5 and how far its metadata can be trusted. The bytes'
    /// own MD5 (a plain ETag) wins over an `md5chksum` that contradicts it:
    /// such metadata was copied from elsewhere, or torn from its object.
    /// `of_bytes` is the MD5 the ETag stands for, when it stands for one
    /// (see [`crate::store::Store::etag_md5`]).
    pub fn from_head(
        of_bytes: Option<[u8; 16]>,
        metadata: &HashMap<String, String>,
    ) -> RemoteFacts {
        let in_metadata = metadata.get(META_MD5).and_then(|v| decode_md5_b64(v));
        let md5 = of_bytes.or(in_metadata);
        let mtime = metadata.get(META_MTIME).and_then(|v| parse_mtime(v));
        RemoteFacts {
            md5,
            mtime,
            metadata_whole: in_metadata.is_some()
                && of_bytes.is_none_or(|e| Some(e) == in_metadata),
        }
    }

    /// Does the recorded mtime equal the file's, to the record's precision?
    pub fn same_mtime(&self, mtime_ns: i64) -> bool {
        match self.mtime {
            Some((t, precision)) => t == mtime_ns.div_euclid(precision) * precision,
            None => false,
        }
    }
}

fn decode_md5_b64(v: &str) -> Option<[u8; 16]> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()?;
    bytes.try_into().ok()
}

/// Formats an mtime the way rclone does: seconds, `.`, nanoseconds.
pub fn format_mtime(mtime_ns: i64) -> String {
    let secs = mtime_ns.div_euclid(1_000_000_000);
    let nanos = mtime_ns.rem_euclid(1_000_000_000);
    format!("{secs}.{nanos:09}")
}

/// Parses `mtime` metadata: rclone's decimal seconds (any number of
/// fraction digits) or node-s3ma's HTTP date (`Sun, 06 Apr 2014 22:53:47
/// GMT`). Returns (nanoseconds, precision in nanoseconds).
pub fn parse_mtime(v: &str) -> Option<(i64, i64)> {
    let v = v.trim();
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    if let Ok(s) = secs.parse::<i64>() {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = &frac[..frac.len().min(9)];
        let precision = 10i64.pow(9 - digits.len() as u32);
        return Some((
            s.checked_mul(1_000_000_000)?.checked_add(pad9(digits))?,
            precision,
        ));
    }
    let dt = aws_smithy_types::DateTime::from_str(v, aws_smithy_types::date_time::Format::HttpDate)
        .ok()?;
    Some((dt.secs().checked_mul(1_000_000_000)?, 1_000_000_000))
}

fn pad9(frac: &str) -> i64 {
    let mut s = frac.to_string();
    while s.len() < 9 {
        s.push('0');
    }
    s.parse().unwrap_or(0)
}

/// Number and size of multipart parts: at least `chunk` bytes each (the
/// last may be smaller), grown so there are at most 10,000.
pub fn part_layout(size: u64, chunk: u64) -> (u64, u64) {
    const MAX_PARTS: u64 = 10_000;
    let min_for_count = size.div_ceil(MAX_PARTS);
    let part = chunk.max(min_for_count.div_ceil(1 << 20) * (1 << 20));
    (part, size.div_ceil(part).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::etag_md5;
    use std::path::PathBuf;

    fn local(size: u64, mtime_ns: i64) -> LocalFile {
        LocalFile {
            rel: "a".into(),
            path: PathBuf::from("a"),
            size,
            mtime_ns,
        }
    }
    fn remote(size: u64, etag: Option<&str>) -> ObjectInfo {
        ObjectInfo {
            key: "a".into(),
            size,
            etag: etag.map(str::to_string),
            last_modified: None,
            archived: false,
        }
    }
    fn rec(size: u64, mtime_ns: i64, etag: Option<&str>) -> Record {
        Record {
            size,
            mtime_ns,
            md5: [0; 16],
            etag: etag.map(str::to_string),
        }
    }

    #[test]
    fn decisions() {
        let l = local(10, 5);
        assert_eq!(decide(&l, None, None), Decision::Upload("new"));
        assert_eq!(
            decide(&l, Some(&remote(11, None)), Some(&rec(10, 5, None))),
            Decision::Upload("size changed")
        );
        assert_eq!(
            decide(&l, Some(&remote(10, None)), Some(&rec(10, 5, None))),
            Decision::Skip
        );
        assert_eq!(
            decide(
                &l,
                Some(&remote(10, Some("e"))),
                Some(&rec(10, 5, Some("e")))
            ),
            Decision::Skip
        );
        // Same-size edit: new mtime → verify against the known MD5.
        assert_eq!(
            decide(&l, Some(&remote(10, None)), Some(&rec(10, 4, None))),
            Decision::Verify { head: false }
        );
        // Replaced behind our back (ETag differs), or no state: ask the server.
        assert_eq!(
            decide(
                &l,
                Some(&remote(10, Some("x"))),
                Some(&rec(10, 5, Some("e")))
            ),
            Decision::Verify { head: true }
        );
        assert_eq!(
            decide(&l, Some(&remote(10, None)), None),
            Decision::Verify { head: true }
        );
    }

    #[test]
    fn mtime_formats() {
        assert_eq!(
            format_mtime(1_700_000_000_123_456_789),
            "1700000000.123456789"
        );
        assert_eq!(format_mtime(5), "0.000000005");
        assert_eq!(
            parse_mtime("1700000000.123456789"),
            Some((1_700_000_000_123_456_789, 1))
        );
        assert_eq!(
            parse_mtime("1700000000.5"),
            Some((1_700_000_000_500_000_000, 100_000_000))
        );
        assert_eq!(
            parse_mtime("1700000000"),
            Some((1_700_000_000_000_000_000, 1_000_000_000))
        );
        assert_eq!(
            parse_mtime("Sun, 06 Apr 2014 22:53:47 GMT"),
            Some((1_396_824_827_000_000_000, 1_000_000_000))
        );
        assert_eq!(parse_mtime("yesterday"), None);
    }

    #[test]
    fn remote_facts_compare_to_precision() {
        let mut meta = HashMap::new();
        meta.insert(
            "mtime".to_string(),
            "Sun, 06 Apr 2014 22:53:47 GMT".to_string(),
        );
        let f = RemoteFacts::from_head(etag_md5("d41d8cd98f00b204e9800998ecf8427e"), &meta);
        assert!(f.same_mtime(1_396_824_827_999_000_000));
        assert!(!f.same_mtime(1_396_824_828_000_000_000));
        assert!(f.md5.is_some(), "a plain ETag is an MD5");
        assert!(!f.metadata_whole, "no md5chksum");
        let f = RemoteFacts::from_head(etag_md5("abc-2"), &HashMap::new());
        assert_eq!(f, RemoteFacts::default());
        meta.insert(
            "md5chksum".to_string(),
            "1B2M2Y8AsgTpgAmY7PhCfg==".to_string(),
        );
        let f = RemoteFacts::from_head(etag_md5("abc-2"), &meta);
        assert_eq!(
            f.md5.map(hex::encode).as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert!(f.metadata_whole);
        // md5chksum copied onto other bytes: the ETag tells the truth.
        let f = RemoteFacts::from_head(etag_md5("0cc175b9c0f1b6a831c399e269772661"), &meta);
        assert_eq!(
            f.md5.map(hex::encode).as_deref(),
            Some("0cc175b9c0f1b6a831c399e269772661")
        );
        assert!(!f.metadata_whole);
    }

    #[test]
    fn part_sizes_respect_limits() {
        assert_eq!(part_layout(12 << 20, 5 << 20), (5 << 20, 3));
        assert_eq!(part_layout(0, 5 << 20), (5 << 20, 1));
        let (part, n) = part_layout(1 << 40, 16 << 20);
        assert!(n <= 10_000 && part * n >= 1 << 40, "{part} {n}");
    }
}
