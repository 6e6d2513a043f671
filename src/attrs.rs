//! `--metadata`: a file's mode, owner, group, access and birth times,
//! stored with its object as user metadata under the names rclone uses
//! (`mode`, `uid`, `gid`, `atime`, `btime`), so `rclone copy -M` (and a
//! restore) can put them back.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What is stored of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attrs {
    /// `st_mode`, the file type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, u32),
    pub btime: Option<(i64, u32)>,
}

/// A file's attributes now (following a symlink, as the upload does);
/// `None` when it cannot be read.
pub fn of(path: &Path) -> Option<Attrs> {
    let m = std::fs::metadata(path).ok()?;
    let btime = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| (d.as_secs() as i64, d.subsec_nanos()));
    Some(Attrs {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        atime: (m.atime(), m.atime_nsec().clamp(0, 999_999_999) as u32),
        btime,
    })
}

fn rfc3339((secs, nanos): (i64, u32)) -> String {
    use aws_smithy_types::date_time::{DateTime, Format};
    DateTime::from_secs_and_nanos(secs, nanos)
        .fmt(Format::DateTime)
        .unwrap_or_default()
}

impl Attrs {
    /// The user metadata entries, in rclone's formats: the mode in octal
    /// with a leading 0, ids in decimal, times in RFC 3339.
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("mode", format!("0{:o}", self.mode)),
            ("uid", self.uid.to_string()),
            ("gid", self.gid.to_string()),
            ("atime", rfc3339(self.atime)),
        ];
        if let Some(b) = self.btime {
            out.push(("btime", rfc3339(b)));
        }
        out
    }

    /// What a change of is mirrored (the times are not: reading a file
    /// changes its atime).
    pub fn key(&self) -> String {
        format!("{:o}:{}:{}", self.mode, self.uid, self.gid)
    }
}

/// Did the mode, owner or group of the file at `path` change since its
/// object at `key` was written (a file that cannot be read: no)?
pub fn changed(state: &mut crate::state::State, key: &str, path: &Path) -> bool {
    let now = of(path).map(|a| a.key());
    now.is_some() && now != state.attrs(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_s_attributes_in_rclone_s_formats() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, "x").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let a = of(&f).expect("attrs");
        let meta: std::collections::HashMap<_, _> = a.metadata().into_iter().collect();
        assert_eq!(meta["mode"], "0100640");
        assert_eq!(meta["uid"], a.uid.to_string());
        assert!(
            meta["atime"].ends_with('Z') && meta["atime"].contains('T'),
            "{meta:?}"
        );
        let before = a.key();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_ne!(of(&f).expect("attrs").key(), before);
        assert!(of(&dir.path().join("gone")).is_none());
    }
}
