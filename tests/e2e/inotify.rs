//! The inotify watch limit below the tree's directory count: the daemon
//! says so with what to do, and falls back to periodic reconciles that
//! still mirror every change. The limit is one for the whole machine, so
//! this test is ignored in the main run and run alone by
//! `scripts/test.sh` (`cargo test --test e2e -- --ignored`); the limit is
//! put back when it ends, pass or fail.

use std::time::Duration;

use crate::harness::*;

const LIMIT: &str = "/proc/sys/fs/inotify/max_user_watches";

/// Puts the old limit back when dropped, also when the test panics.
struct Lowered {
    old: String,
}

impl Lowered {
    fn to(n: u64) -> Lowered {
        let old = std::fs::read_to_string(LIMIT).expect("read the watch limit");
        std::fs::write(LIMIT, n.to_string()).expect("lower the watch limit (tests run as root)");
        Lowered { old }
    }
}

impl Drop for Lowered {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(LIMIT, self.old.trim()) {
            eprintln!("could not restore {LIMIT} to {}: {e}", self.old.trim());
        }
    }
}

/// Inotify watches in use now, by every process: one `inotify wd:` line
/// per watch in the fdinfo of each inotify descriptor.
fn watches_in_use() -> u64 {
    let mut n = 0;
    for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(fds) = std::fs::read_dir(proc.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(info) = std::fs::read_to_string(fd.path()) {
                n += info
                    .lines()
                    .filter(|l| l.starts_with("inotify wd:"))
                    .count() as u64;
            }
        }
    }
    n
}

#[test]
#[ignore = "lowers a machine-wide limit: run alone, as scripts/test.sh does"]
fn below_the_watch_limit_changes_are_still_mirrored_by_reconciles() {
    let _alone = exclusive();
    for kind in KINDS {
        let env = TestEnv::new(kind);
        for d in 0..120 {
            env.write(&format!("d{d:03}/f.txt"), format!("{d}"));
        }
        let limit = watches_in_use() + 40;
        let _lowered = Lowered::to(limit);
        let mut w = env.watch(&["--delete", "--rescan-interval", "2s"]);
        w.ready();
        let said = w.logs();
        assert!(
            said.contains(&format!(
                "the inotify watch limit is reached (fs.inotify.max_user_watches = {limit})"
            )) && said.contains("sudo sysctl fs.inotify.max_user_watches=")
                && said.contains("the whole tree is reconciled every 2s"),
            "{kind:?}: {}",
            w.logs()
        );
        env.converge(Duration::from_secs(60), &|| w.logs());
        // Changes everywhere, the unwatched directories among them.
        for d in (0..120).step_by(7) {
            env.write(&format!("d{d:03}/f.txt"), format!("changed {d}"));
            env.write(&format!("d{d:03}/new.txt"), "new");
        }
        std::fs::remove_file(env.tree().join("d119/f.txt")).expect("rm");
        env.converge(Duration::from_secs(120), &|| w.logs());
        assert_eq!(w.term(), 0, "{kind:?}: {}", w.logs());
    }
}
