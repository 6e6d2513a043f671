//! What a daemon on a busy web root meets, one regression test each:
//! rename cycles, mass deletions under `--max-delete`, a symlinked root
//! switched by a deploy, a file that never goes quiet, its own state
//! inside the tree, read-only load, directories moved and then changed.

use std::time::{Duration, Instant};

use crate::harness::*;

const WITHIN: Duration = Duration::from_secs(60);

fn wait_until(what: &str, w: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !done() {
        assert!(Instant::now() < deadline, "{what}:\n{}", w.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rename_swaps_and_cycles_never_copy_an_object_being_rewritten() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        // Different sizes, so a wrong copy cannot pass for the right one.
        let names = ["f1", "f2", "f3"];
        for (i, n) in names.iter().enumerate() {
            env.write(n, vec![b'a' + i as u8; 1000 + 700 * i]);
        }
        let mut w = env.watch(&["--delete", "--rescan-interval", "0", "-v"]);
        w.ready();
        env.converge(WITHIN, &|| w.logs());
        let tree = env.tree();
        let mv = |a: &str, b: &str| std::fs::rename(tree.join(a), tree.join(b)).expect("mv");
        for round in 0..6 {
            // A swap through a temporary name, then a cycle of three.
            mv("f1", "t");
            mv("f2", "f1");
            mv("t", "f2");
            mv("f3", "t");
            mv("f2", "f3");
            mv("f1", "f2");
            mv("t", "f1");
            env.converge(WITHIN, &|| format!("round {round}\n{}", w.logs()));
        }
        wait_until("idle", &w, || w.idle());
        env.converge(Duration::ZERO, &|| w.logs());
        env.assert_md5chksum(&tree, &|| w.logs());
        assert_eq!(w.term(), 0);
    }
}

#[test]
fn max_delete_caps_watch_over_a_window_and_holds_the_rest() {
    let env = TestEnv::new(Kind::Moto);
    // What is left after the deletions: the tree is not empty (the empty
    // tree has a guard of its own).
    env.write("keep.html", "kept");
    for i in 0..150 {
        env.write(&format!("n{i}.html"), format!("page {i}"));
        env.write(&format!("sub/x{i}.txt"), format!("file {i}"));
    }
    let mut w = env.watch(&["--delete", "--max-delete", "100", "--rescan-interval", "0"]);
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    for i in 0..150 {
        std::fs::remove_file(env.tree().join(format!("n{i}.html"))).expect("rm");
    }
    let held = w.wait_for("held", WITHIN);
    assert!(
        held["message"]
            .as_str()
            .is_some_and(|m| m.contains("--max-delete 100 within 1h")
                && m.contains("restart it with a higher --max-delete")),
        "{held}"
    );
    for i in 0..150 {
        std::fs::remove_file(env.tree().join(format!("sub/x{i}.txt"))).expect("rm");
    }
    // Every deletion is looked at (and held): the held count reaches all
    // 200 the cap leaves.
    wait_until("all 200 held", &w, || {
        w.actions("held")
            .iter()
            .any(|v| v["held"].as_u64() == Some(200))
    });
    let deleted = w.keys("delete").len();
    assert_eq!(deleted, 100, "exactly the cap:\n{}", w.logs());
    assert_eq!(env.keys().len(), 201, "the rest is still there");
    assert_eq!(w.term(), 0);
    let stopped = w.actions("stopped").pop().expect("a stopped line");
    assert!(stopped["waiting"].as_u64() >= Some(200), "{stopped}");

    // Not forgotten: a restart with the same cap holds them again...
    let mut w2 = env.watch(&["--delete", "--max-delete", "100", "--rescan-interval", "0"]);
    let again = w2.wait_for("held", WITHIN);
    assert_eq!(again["held"].as_u64(), Some(200), "{}", w2.logs());
    w2.ready();
    assert!(w2.keys("delete").is_empty(), "{}", w2.logs());
    assert_eq!(env.keys().len(), 201);
    assert_eq!(w2.term(), 0);

    // ...and a higher one lets them through.
    let mut w3 = env.watch(&["--delete", "--max-delete", "1000", "--rescan-interval", "0"]);
    w3.ready();
    env.converge(WITHIN, &|| w3.logs());
    assert_eq!(w3.term(), 0);
}

#[test]
fn a_symlinked_root_switched_by_a_deploy_is_followed_and_locked_as_given() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        // Capistrano's layout: releases side by side, `current` the link.
        let app = env.work().join("srv/app");
        for r in ["r1", "r2"] {
            let dir = app.join("releases").join(r);
            std::fs::create_dir_all(dir.join("css")).expect("mkdir");
            std::fs::write(dir.join("index.html"), format!("<p>{r}</p>")).expect("write");
            std::fs::write(dir.join("css/site.css"), format!("/* {r} */")).expect("write");
            std::fs::write(dir.join(format!("only-in-{r}.txt")), r).expect("write");
        }
        let current = app.join("current");
        std::os::unix::fs::symlink("releases/r1", &current).expect("symlink");
        let current_s = current.display().to_string();
        let dest = env.dest();
        let mut w = env.watch_dir(&current, &["--delete", "--rescan-interval", "0"]);
        w.ready();
        converge_tree(&current, &env.primary(), WITHIN, &|| w.logs());

        // The deploy: a new link renamed over the old one, atomically.
        std::os::unix::fs::symlink("releases/r2", app.join("current.tmp")).expect("symlink");
        std::fs::rename(app.join("current.tmp"), &current).expect("mv -T");
        converge_tree(&current, &env.primary(), WITHIN, &|| w.logs());
        assert!(
            w.stderr().contains("now leads to releases/r2"),
            "{}",
            w.logs()
        );
        // Events now come from r2.
        std::fs::write(app.join("releases/r2/new.html"), "after the deploy").expect("write");
        converge_tree(&current, &env.primary(), WITHIN, &|| w.logs());

        // Cron's sync of the same path, or of the release it leads to,
        // waits for the daemon instead of racing it.
        for dir in [
            current_s.clone(),
            app.join("releases/r2").display().to_string(),
        ] {
            let run = env.s3ma(&["sync", &dir, &dest, "--delete"]).code(4);
            assert!(run.stderr.contains("already running"), "{run}");
        }
        assert_eq!(w.term(), 0);
    }
}

#[test]
fn a_file_that_never_goes_quiet_is_uploaded_at_least_every_max_delay() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let mut w = env.watch(&["--max-delay", "1s", "--rescan-interval", "0"]);
        w.ready();
        let path = env.tree().join("app.log");
        let key = format!("{}app.log", env.prefix);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                use std::io::Write as _;
                let mut f = std::fs::File::create(&path).expect("create");
                let mut n = 0u64;
                // Appends every 20 ms, never closed: never quiet for the
                // 100 ms window.
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    writeln!(f, "line {n}: {}", "x".repeat(40)).expect("append");
                    f.flush().expect("flush");
                    n += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        // Two uploads while it is still being appended to, each a version
        // the file really had (its first bytes), never a torn one.
        wait_until("two uploads during the appends", &w, || {
            w.keys("upload").iter().filter(|k| **k == key).count() >= 2
        });
        let object = env.objects().remove(&key).expect("the object");
        let now = std::fs::read(&path).expect("read");
        assert!(
            !object.is_empty() && now.starts_with(&object),
            "the object is the file's beginning ({} of {} bytes)",
            object.len(),
            now.len()
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        writer.join().expect("writer");
        env.converge(WITHIN, &|| w.logs());
        assert_eq!(w.term(), 0);
    }
}

#[test]
fn the_state_directory_inside_the_tree_is_never_mirrored() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("index.html", "home");
    let state = env.tree().join("var/s3ma-state");
    let state_s = state.display().to_string();
    let tree = env.tree().display().to_string();
    let dest = env.dest();
    let sync = env
        .s3ma(&["sync", &tree, &dest, "--json", "--state-dir", &state_s])
        .ok();
    assert!(std::fs::read_dir(&state).is_ok_and(|mut d| d.next().is_some()));
    let state_keys = || -> Vec<String> {
        env.keys()
            .into_iter()
            .filter(|k| k.contains("s3ma-state"))
            .collect()
    };
    assert_eq!(state_keys(), Vec::<String>::new(), "{sync}");
    let mut w = env.watch(&[
        "--delete",
        "--state-dir",
        &state_s,
        "-v",
        "--rescan-interval",
        "0",
    ]);
    w.ready();
    for i in 0..20 {
        env.write(&format!("p{i}.html"), format!("page {i}"));
    }
    let pages = || w.keys("upload").iter().filter(|k| k.contains("/p")).count();
    wait_until("the 20 pages uploaded", &w, || pages() == 20);
    assert_eq!(state_keys(), Vec::<String>::new(), "{}", w.logs());
    // And it goes idle: its own writes do not feed back.
    wait_until("idle after the changes", &w, || w.idle());
    assert_eq!(state_keys(), Vec::<String>::new(), "{}", w.logs());
    assert_eq!(env.keys().len(), 21, "{}", w.logs());
    assert_eq!(w.term(), 0);
    // sync neither uploads it nor counts it as something to delete.
    let again = env.sync(&["--state-dir", &state_s, "--delete"]).ok();
    assert_eq!(again.summary()["uploaded"], 0, "{again}");
    assert_eq!(again.summary()["deleted"], 0, "{again}");
}

#[test]
fn reading_the_tree_wakes_nothing() {
    let env = TestEnv::new(Kind::S3sFs);
    for i in 0..50 {
        env.write(&format!("r/{i}.html"), format!("page {i}"));
    }
    let mut w = env.watch(&["-vv", "--rescan-interval", "0"]);
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    let before = w.stderr().matches("debug: event").count();
    for _ in 0..20 {
        for i in 0..50 {
            std::fs::read(env.tree().join(format!("r/{i}.html"))).expect("read");
        }
    }
    // A write after the reads: once its events are in, so would the
    // reads' be.
    env.write("marker.txt", "written after the reads");
    env.converge(WITHIN, &|| w.logs());
    let events: Vec<String> = w
        .stderr()
        .lines()
        .filter(|l| l.contains("debug: event"))
        .skip(before)
        .map(str::to_string)
        .collect();
    assert!(
        !events.is_empty() && events.iter().all(|e| e.contains("marker.txt")),
        "reads reached the daemon: {events:#?}"
    );
    assert_eq!(w.term(), 0);
}

#[test]
fn files_renamed_and_deleted_in_a_moved_directory_leave_nothing_behind() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        for i in 0..12 {
            env.write(&format!("m6/f{i}"), format!("file {i} of m6"));
        }
        let mut w = env.watch(&["--delete", "--rescan-interval", "0", "-v"]);
        w.ready();
        env.converge(WITHIN, &|| w.logs());
        let t = env.tree();
        // The directory moves, then files in it are renamed and deleted
        // before (or while) its move is mirrored.
        std::fs::rename(t.join("m6"), t.join("m12")).expect("mv dir");
        std::fs::rename(t.join("m12/f9"), t.join("m12/f41")).expect("mv");
        std::fs::remove_file(t.join("m12/f3")).expect("rm");
        std::fs::rename(t.join("m12/f4"), t.join("f4-out")).expect("mv out of the dir");
        std::fs::rename(t.join("m12"), t.join("m20")).expect("mv dir again");
        std::fs::remove_file(t.join("m20/f41")).expect("rm");
        env.converge(WITHIN, &|| w.logs());
        wait_until("idle", &w, || w.idle());
        env.converge(Duration::ZERO, &|| w.logs());
        env.assert_md5chksum(&t, &|| w.logs());
        assert_eq!(w.term(), 0);
    }
}

#[test]
fn a_full_event_queue_becomes_a_reconcile_not_a_lost_change() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("first.txt", "before the start");
    let mut w = env.watch(&["--delete", "--event-queue", "16", "--rescan-interval", "0"]);
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    // Far more events than 16 at once: the daemon is stopped while they
    // are made in directories it watches, so the kernel hands them over in
    // one go, however fast the daemon would have taken them one by one.
    for d in 0..8 {
        env.write(&format!("many/{d}/seen.txt"), "the directory is watched");
    }
    env.converge(WITHIN, &|| w.logs());
    w.signal("STOP");
    for i in 0..400 {
        env.write(&format!("many/{}/{i}.txt", i % 8), format!("file {i}"));
    }
    std::fs::remove_file(env.tree().join("first.txt")).expect("rm");
    w.signal("CONT");
    let reconcile = w.wait_for("reconcile", WITHIN);
    assert!(
        reconcile["reason"]
            .as_str()
            .is_some_and(|r| r.contains("more than 16 events were waiting")),
        "{reconcile}"
    );
    env.converge(WITHIN, &|| w.logs());
    assert_eq!(w.term(), 0);
}

#[test]
fn a_directory_the_daemon_cannot_read_keeps_its_objects() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new(Kind::S3sFs);
    env.write("ok.txt", "readable");
    env.write("locked/a.txt", "in a directory that becomes unreadable");
    env.write("locked/b.txt", "and another");
    let tree = env.tree().display().to_string();
    let dest = env.dest();
    let c = env.unprivileged();
    let mut w = env.watch_as(
        c,
        &[
            &tree,
            &dest,
            "--endpoint",
            &env.endpoint,
            "--delete",
            "-vv",
            "--rescan-interval",
            "0",
        ],
    );
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    // chmod 000: its files cannot be looked at, which says nothing of
    // whether they are there.
    std::fs::set_permissions(
        env.tree().join("locked"),
        std::fs::Permissions::from_mode(0o000),
    )
    .expect("chmod");
    wait_until("the directory is looked at", &w, || {
        w.stdout().contains("locked") && w.stdout().contains("\"action\":\"error\"")
    });
    env.write("after.txt", "written after the chmod");
    wait_until("a later change mirrored", &w, || {
        w.keys("upload").iter().any(|k| k.ends_with("after.txt"))
    });
    std::fs::set_permissions(
        env.tree().join("locked"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    assert!(
        w.keys("delete").is_empty(),
        "nothing deleted:\n{}",
        w.logs()
    );
    env.converge(WITHIN, &|| w.logs());
    assert_eq!(w.term(), 0);
}

#[test]
fn a_directory_replaced_by_one_whose_files_match_sizes_and_mtimes_is_checked() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let old = env.write("conf/app.ini", "mode=A");
        set_mtime(&old, 1_700_000_000);
        let mut w = env.watch(&["--delete", "--rescan-interval", "0", "-v"]);
        w.ready();
        env.converge(WITHIN, &|| w.logs());
        // Another directory, made elsewhere (a release unpacked with its
        // mtimes), moved in where the old one was.
        let staged = env.work().join("new-conf");
        std::fs::create_dir_all(&staged).expect("mkdir");
        std::fs::write(staged.join("app.ini"), "mode=B").expect("write");
        set_mtime(&staged.join("app.ini"), 1_700_000_000);
        std::fs::rename(env.tree().join("conf"), env.work().join("old-conf")).expect("mv out");
        std::fs::rename(&staged, env.tree().join("conf")).expect("mv in");
        env.converge(WITHIN, &|| w.logs());
        assert_eq!(w.term(), 0);
    }
}

#[test]
fn an_empty_root_sweeps_nothing_under_a_directory_made_again() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("index.html", "home");
    for i in 0..5 {
        env.write(&format!("photos/p{i}.jpg"), format!("photo {i}"));
    }
    let mut w = env.watch(&["--delete", "--rescan-interval", "0", "-vv"]);
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    let before = env.keys();
    // Emptied, then the application makes its directory again, empty.
    std::fs::remove_dir_all(env.tree().join("photos")).expect("rm -r");
    std::fs::remove_file(env.tree().join("index.html")).expect("rm");
    wait_until("the empty root is said", &w, || {
        w.stdout().contains("is empty")
    });
    std::fs::create_dir(env.tree().join("photos")).expect("mkdir");
    wait_until("the new directory waits for the root", &w, || {
        w.stderr()
            .lines()
            .any(|l| l.contains("debug: photos waits") && l.contains("root is missing or empty"))
    });
    assert_eq!(env.keys(), before, "nothing deleted:\n{}", w.logs());
    // Files back: the mirror follows again.
    env.write("photos/p9.jpg", "a new photo");
    env.converge(WITHIN, &|| w.logs());
    assert_eq!(w.term(), 0);
}

#[test]
fn idle_is_said_again_after_a_reconcile_that_no_event_started() {
    let env = TestEnv::new(Kind::S3sFs);
    let app = env.work().join("app");
    for r in ["r1", "r2"] {
        let dir = app.join("releases").join(r);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(format!("{r}.txt")), r).expect("write");
    }
    let current = app.join("current");
    std::os::unix::fs::symlink("releases/r1", &current).expect("symlink");
    let mut w = env.watch_dir(&current, &["--delete", "--rescan-interval", "0", "-v"]);
    w.ready();
    wait_until("idle", &w, || w.idle());
    // A deploy switches the link: no event in the directory watched, a
    // reconcile that uploads and deletes; then the daemon is idle again
    // and says so after everything it said.
    std::os::unix::fs::symlink("releases/r2", app.join("current.tmp")).expect("symlink");
    std::fs::rename(app.join("current.tmp"), &current).expect("mv -T");
    converge_tree(&current, &env.primary(), WITHIN, &|| w.logs());
    wait_until("idle after the reconcile", &w, || w.idle());
    assert_eq!(w.term(), 0, "{}", w.logs());
}
