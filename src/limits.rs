//! Resource limits a long-running mirror must live within: open files and
//! the mode of what it writes.

use crate::config::Targets;

/// Files a run keeps open besides its transfers (state databases, the
/// journal, inotify, the walk, the runtime).
const BASE_FILES: u64 = 64;

/// Each request in flight may hold a file and a connection.
const FILES_PER_REQUEST: u64 = 2;

/// What s3ma writes (the state database lists every path, size and MD5 of
/// a tree that may be private) is its user's alone: directories 0700,
/// files 0600. s3ma writes nothing else.
pub fn private_files() {
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Would a daemon's lines want a time of their own: stderr is a terminal
/// or a plain file, and not journald's stream (`JOURNAL_STREAM`, which
/// systemd sets to its device and inode).
pub fn stamps_wanted() -> bool {
    use std::io::IsTerminal;
    // SAFETY: fstat fills the struct for an open descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::fstat(2, &mut st) } == 0;
    if !ok {
        return false;
    }
    if let Ok(j) = std::env::var("JOURNAL_STREAM") {
        if j == format!("{}:{}", st.st_dev, st.st_ino) {
            return false;
        }
    }
    std::io::stderr().is_terminal() || (st.st_mode & libc::S_IFMT) == libc::S_IFREG
}

/// Raises the soft open-file limit to the hard one, and returns the soft
/// limit then in force.
fn raise_open_files() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// The concurrency each of `destinations` may use within `limit` open
/// files, if it must be lower than `wanted`.
fn fitted(wanted: usize, destinations: usize, limit: u64) -> Option<usize> {
    let need = BASE_FILES + FILES_PER_REQUEST * wanted as u64 * destinations as u64;
    if need <= limit {
        return None;
    }
    let room = limit.saturating_sub(BASE_FILES) / (FILES_PER_REQUEST * destinations.max(1) as u64);
    Some((room as usize).clamp(1, wanted))
}

/// Raises the open-file limit, and lowers every target's concurrency when
/// it still cannot fit (said once, in the returned warning).
pub fn fit_open_files(targets: &mut Targets) -> Option<String> {
    let limit = raise_open_files()?;
    // An adapting concurrency must fit at its cap; the cap is lowered
    // quietly (nobody asked for that many).
    let n = targets.len();
    for t in targets.iter_mut() {
        let transfer = &mut t.sync.transfer;
        if let Some(cap) = transfer.concurrency_cap {
            let cap = fitted(cap, n, limit).unwrap_or(cap);
            transfer.concurrency_cap = Some(cap);
            transfer.concurrency = transfer.concurrency.min(cap);
        }
    }
    let wanted = targets.iter().map(|t| t.sync.transfer.concurrency).max()?;
    let fit = fitted(wanted, targets.len(), limit)?;
    for t in targets.iter_mut() {
        t.sync.transfer.concurrency = t.sync.transfer.concurrency.min(fit);
    }
    Some(format!(
        "the open-file limit is {limit} (ulimit -n), too low for --concurrency {wanted} on {} \
         destination(s); using {fit} (raise the limit, e.g. LimitNOFILE= in the systemd unit, \
         to use more)",
        targets.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_fits_the_open_file_limit() {
        assert_eq!(fitted(32, 1, 1024), None);
        assert_eq!(fitted(1024, 1, 1024), Some(480));
        assert_eq!(fitted(1024, 2, 1024), Some(240));
        assert_eq!(fitted(8, 1, 10), Some(1));
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_one() {
        let soft = raise_open_files().expect("getrlimit");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reads the limits into the struct given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((soft, lim.rlim_cur), (lim.rlim_max, lim.rlim_max));
    }
}
