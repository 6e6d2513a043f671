//! `s3ma watch` as a child process against the real servers: every test
//! changes the tree and polls (with a deadline) until the bucket holds
//! exactly the tree, bytes included.

use std::time::Duration;

use crate::harness::{Kind, OwnServer, TestEnv, KINDS};

const WITHIN: Duration = Duration::from_secs(30);

fn rename(env: &TestEnv, from: &str, to: &str) {
    let to_path = env.tree().join(to);
    std::fs::create_dir_all(to_path.parent().expect("parent")).expect("mkdir");
    std::fs::rename(env.tree().join(from), to_path).expect("rename");
}

#[test]
fn creates_edits_and_deletes_are_mirrored() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("old.txt", "there before the start");
        env.write("keep/same.txt", "aaaa");
        env.write("gone.txt", "to be deleted");
        let mut w = env.watch(&["--delete"]);
        w.ready();
        env.converge(WITHIN, &|| w.logs());

        env.write("new.txt", "created while watching");
        env.write("old.txt", "edited: now a different length");
        // Same size, new bytes.
        env.write("keep/same.txt", "bbbb");
        std::fs::remove_file(env.tree().join("gone.txt")).expect("rm");
        env.converge(WITHIN, &|| w.logs());
        assert!(w
            .keys("delete")
            .contains(&format!("{}gone.txt", env.prefix)));
        let up = w.actions("upload");
        let line = up
            .iter()
            .find(|v| v["key"] == format!("{}new.txt", env.prefix))
            .expect("an upload line for new.txt");
        assert!(
            line["size"].as_u64() == Some(22) && line["ms"].is_u64(),
            "{line}"
        );
        assert_eq!(w.term(), 0, "{}", w.logs());
    }
}

#[test]
fn without_delete_removed_files_stay() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let mut w = env.watch(&[]);
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    std::fs::remove_file(env.tree().join("a.txt")).expect("rm");
    env.write("b.txt", "b");
    let key_b = format!("{}b.txt", env.prefix);
    let key_a = format!("{}a.txt", env.prefix);
    let deadline = std::time::Instant::now() + WITHIN;
    while !env.keys().contains(&key_b) {
        assert!(std::time::Instant::now() < deadline, "{}", w.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(env.keys(), [key_a, key_b]);
    assert_eq!(w.term(), 0);
}

#[test]
fn renames_are_server_side_copies() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("a.txt", "the content of a, renamed later");
        for i in 0..5 {
            env.write(
                &format!("dir/sub/f{i}.txt"),
                format!("file {i} in a directory"),
            );
        }
        // The target's parent exists (a directory made in the same instant
        // as the rename could not be watched in time to see it).
        std::fs::create_dir_all(env.tree().join("moved")).expect("mkdir");
        let mut w = env.watch(&["--delete"]);
        w.ready();
        env.converge(WITHIN, &|| w.logs());

        rename(&env, "a.txt", "b.html");
        rename(&env, "dir", "moved/dir2");
        env.converge(WITHIN, &|| w.logs());
        let copies = w.keys("copy");
        let p = &env.prefix;
        let mut want = vec![format!("{p}b.html")];
        want.extend((0..5).map(|i| format!("{p}moved/dir2/sub/f{i}.txt")));
        assert_eq!(copies, want, "{}", w.logs());
        // The copy carries the new name's type and the checksum metadata.
        let (ctype, meta, _) = env.head(&format!("{p}b.html"));
        assert!(ctype.starts_with("text/html"), "{ctype}");
        assert_eq!(
            meta.get("md5chksum").map(String::as_str),
            Some(crate::harness::md5_b64(b"the content of a, renamed later").as_str())
        );
        assert_eq!(w.term(), 0);
    }
}

#[test]
fn renames_out_of_and_into_the_tree() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("out.txt", "leaves the tree");
    let mut w = env.watch(&["--delete"]);
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    let outside = env.work().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::rename(env.tree().join("out.txt"), outside.join("out.txt")).expect("move out");
    std::fs::write(outside.join("in.txt"), "comes in").expect("write");
    std::fs::create_dir_all(outside.join("indir/deep")).expect("mkdir");
    std::fs::write(outside.join("indir/deep/x.txt"), "a moved-in tree").expect("write");
    std::fs::rename(outside.join("in.txt"), env.tree().join("in.txt")).expect("move in");
    std::fs::rename(outside.join("indir"), env.tree().join("indir")).expect("move in");
    env.converge(WITHIN, &|| w.logs());
    assert_eq!(w.term(), 0);
}

#[test]
fn deep_new_directories_with_files_are_walked() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let mut w = env.watch(&["--delete"]);
        w.ready();
        // Files land in directories before their watches can exist.
        for i in 0..6 {
            let dir = format!("a/b/c/d/e/f/g{i}");
            env.write(&format!("{dir}/x.txt"), format!("x{i}"));
            env.write(&format!("{dir}/h/i/y.txt"), format!("y{i}"));
        }
        env.converge(WITHIN, &|| w.logs());
        std::fs::remove_dir_all(env.tree().join("a/b/c/d/e/f/g3")).expect("rm -r");
        env.converge(WITHIN, &|| w.logs());
        assert_eq!(w.term(), 0);
    }
}

#[test]
fn atomic_saves_and_editor_files() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("page.html", "<p>v0</p>");
        let mut w = env.watch(&["--delete"]);
        w.ready();
        for i in 1..=15 {
            // Write a temp file, then rename it over the target.
            env.write(".page.html.tmp", format!("<p>version {i}</p>"));
            rename(&env, ".page.html.tmp", "page.html");
            // An editor's backup and swap files.
            env.write("page.html~", format!("backup {i}"));
            env.write(".page.html.swp", "swap");
            env.write("4913", "");
            std::fs::remove_file(env.tree().join("4913")).expect("rm");
        }
        env.converge(WITHIN, &|| w.logs());
        let keys = env.keys();
        assert_eq!(keys, [format!("{}page.html", env.prefix)], "{}", w.logs());
        assert_eq!(w.term(), 0);
    }
}

#[test]
fn rapid_writes_to_one_file_end_with_its_last_content() {
    let env = TestEnv::new(Kind::S3sFs);
    let mut w = env.watch(&[]);
    w.ready();
    let path = env.tree().join("log.txt");
    let mut text = String::new();
    for i in 0..300 {
        text.push_str(&format!("line {i}\n"));
        std::fs::write(&path, &text).expect("write");
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    env.converge(WITHIN, &|| w.logs());
    // Same size, different bytes, right after the last write.
    std::fs::write(&path, text.replace("line 0", "LINE 0")).expect("write");
    env.converge(WITHIN, &|| w.logs());
    assert_eq!(w.term(), 0);
}

#[test]
fn a_burst_of_thousands_of_files_converges() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let mut w = env.watch(&["--delete"]);
        w.ready();
        let n = 2000;
        for i in 0..n {
            env.write(
                &format!("burst/{}/{i}.txt", i % 40),
                format!("file number {i}"),
            );
        }
        let took = env.converge(Duration::from_secs(120), &|| w.logs());
        eprintln!("{kind:?}: {n} files converged {took:?} after the burst");
        assert_eq!(w.keys("upload").len(), n, "each file uploaded once");
        assert_eq!(w.term(), 0);
    }
}

#[test]
fn sigkill_during_a_burst_then_restart_loses_nothing() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        for i in 0..50 {
            env.write(&format!("base/{i}.txt"), format!("base file {i}"));
        }
        let mut w = env.watch(&["--delete"]);
        w.ready();
        for i in 0..800 {
            env.write(
                &format!("burst/{}/{i}.txt", i % 20),
                format!("burst file {i}"),
            );
        }
        // Kill it mid-way: some uploads done, most not.
        let deadline = std::time::Instant::now() + WITHIN;
        while env.keys().len() < 60 {
            assert!(std::time::Instant::now() < deadline, "{}", w.logs());
            std::thread::sleep(Duration::from_millis(10));
        }
        w.kill();
        let before_restart = env.objects();
        // Changes while it is down.
        std::fs::remove_file(env.tree().join("base/3.txt")).expect("rm");
        env.write("base/4.txt", "changed while s3ma was down");
        env.write("new-while-down.txt", "new");

        let mut w2 = env.watch(&["--delete"]);
        w2.ready();
        env.converge(WITHIN, &|| format!("{}\n{}", w.logs(), w2.logs()));
        assert!(
            !w2.stderr().contains("could not be read"),
            "the state database must open cleanly:\n{}",
            w2.logs()
        );
        // Nothing already there with the right bytes is sent again.
        for key in w2.keys("upload") {
            let rel = &key[env.prefix.len()..];
            let local = std::fs::read(env.tree().join(rel)).expect("local");
            assert!(
                before_restart.get(&key) != Some(&local),
                "{key} was uploaded again although the bucket had it:\n{}",
                w2.logs()
            );
        }
        assert_eq!(w2.term(), 0);
    }
}

#[test]
fn sigterm_exits_zero_and_the_journal_finishes_the_job() {
    use std::io::Write as _;
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let same = env.write("same.txt", "aaaa");
        crate::harness::set_mtime(&same, 1_600_000_000);
        let mut w = env.watch(&["--delete", "--debounce", "3000", "-vv"]);
        w.ready();
        env.converge(WITHIN, &|| w.logs());
        // Files still open for writing (no close yet): they wait out the
        // 3 s window, so nothing is uploaded before the stop.
        std::fs::create_dir_all(env.tree().join("j")).expect("mkdir");
        let mut open = Vec::new();
        for i in 0..30 {
            let mut f =
                std::fs::File::create(env.tree().join(format!("j/{i}.txt"))).expect("create");
            f.write_all(format!("journaled {i}").as_bytes())
                .expect("write");
            open.push(f);
        }
        // Same size and the same mtime: only the event tells it changed.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&same)
            .expect("open");
        f.write_all(b"bbbb").expect("write");
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000))
            .expect("mtime");
        open.push(f);
        // Both reached the daemon (it logs each event at -vv; its request
        // lines name keys too, so only event lines count).
        let heard = |w: &crate::harness::Daemon, what: &str| {
            w.stderr()
                .lines()
                .any(|l| l.contains("debug: event") && l.contains(what))
        };
        let deadline = std::time::Instant::now() + WITHIN;
        while !(heard(&w, "same.txt") && heard(&w, "/j\"")) {
            assert!(std::time::Instant::now() < deadline, "{}", w.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(w.term(), 0, "{}", w.logs());
        drop(open);
        // At least same.txt and j/ (files written before j's own watch
        // existed have no event of their own; walking j finds them).
        let stopped = w.actions("stopped");
        assert!(
            stopped.len() == 1 && stopped[0]["waiting"].as_u64() >= Some(2),
            "{}",
            w.logs()
        );
        assert!(
            w.keys("upload").len() == 1,
            "nothing sent after the start:\n{}",
            w.logs()
        );
        let mut w2 = env.watch(&["--delete"]);
        w2.ready();
        env.converge(WITHIN, &|| w2.logs());
        assert_eq!(w2.term(), 0);
    }
}

#[test]
fn server_outage_while_files_change_then_everything_flushes() {
    let mut server = OwnServer::start();
    let env = TestEnv::on(Kind::S3sFs, &server.endpoint());
    env.write("a.txt", "before the outage");
    env.write("b.txt", "deleted during the outage");
    let mut w = env.watch(&[
        "--delete",
        "--connect-timeout",
        "1",
        "--read-timeout",
        "2",
        "--retries",
        "1",
    ]);
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    server.down();
    env.write("a.txt", "changed during the outage, longer");
    env.write("c/new.txt", "created during the outage");
    std::fs::remove_file(env.tree().join("b.txt")).expect("rm");
    // It fails and backs off, and says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !w.stdout().contains("retrying in") {
        assert!(
            std::time::Instant::now() < deadline,
            "the outage is not reported:\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.up();
    env.converge(Duration::from_secs(90), &|| w.logs());
    assert_eq!(w.term(), 0);
}

#[test]
fn sighup_reconciles_what_no_event_reported() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("x.txt", "x");
        env.write("y.txt", "y");
        let mut w = env.watch(&["--delete"]);
        w.ready();
        env.converge(WITHIN, &|| w.logs());
        // Changed behind its back: no file-system event at all.
        crate::harness::block_on(
            env.client
                .delete_object()
                .bucket(&env.bucket)
                .key(format!("{}x.txt", env.prefix))
                .send(),
        )
        .expect("delete");
        env.put(&format!("{}stray.txt", env.prefix), b"not in the tree");
        w.signal("HUP");
        w.wait_for("reconcile", WITHIN);
        env.converge(WITHIN, &|| w.logs());
        assert_eq!(w.term(), 0);
    }
}

#[test]
fn an_emptied_or_vanished_root_deletes_nothing() {
    let env = TestEnv::new(Kind::S3sFs);
    for i in 0..5 {
        env.write(&format!("f{i}.txt"), format!("{i}"));
    }
    // Hidden and excluded names do not make it non-empty.
    env.write(".hidden", "not mirrored");
    let mut w = env.watch(&["--delete"]);
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    let full = env.keys();

    // Emptied (an unmounted disk looks like this).
    for i in 0..5 {
        std::fs::remove_file(env.tree().join(format!("f{i}.txt"))).expect("rm");
    }
    let deadline = std::time::Instant::now() + WITHIN;
    while !w.stdout().contains("is empty") {
        assert!(std::time::Instant::now() < deadline, "{}", w.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.keys(), full, "nothing deleted:\n{}", w.logs());

    // Vanished: the directory itself moved away, then back with its files.
    for i in 0..5 {
        env.write(&format!("f{i}.txt"), format!("{i}"));
    }
    let aside = env.work().join("aside");
    std::fs::rename(env.tree(), &aside).expect("move the root away");
    let deadline = std::time::Instant::now() + WITHIN;
    while !w.stdout().contains("is gone") {
        assert!(std::time::Instant::now() < deadline, "{}", w.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(env.keys(), full, "nothing deleted:\n{}", w.logs());
    std::fs::rename(&aside, env.tree()).expect("move the root back");
    env.write("after.txt", "written after the root came back");
    env.converge(WITHIN, &|| w.logs());
    assert_eq!(w.term(), 0);
}

#[test]
fn periodic_reconcile_repairs_the_bucket() {
    let env = TestEnv::new(Kind::Moto);
    env.write("p.txt", "periodic");
    let mut w = env.watch(&["--delete", "--rescan-interval", "1s"]);
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    env.put(
        &format!("{}stray.txt", env.prefix),
        b"removed by the next reconcile",
    );
    w.wait_for("reconcile", WITHIN);
    env.converge(WITHIN, &|| w.logs());
    assert_eq!(w.term(), 0);
}

#[test]
fn watch_and_sync_of_one_pair_never_run_together() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("x.txt", "x");
    let mut w = env.watch(&[]);
    w.ready();
    let sync = env.sync(&[]).code(4);
    assert!(sync.stderr.contains("already running"), "{sync}");
    assert_eq!(w.term(), 0);
    env.sync(&[]).ok();
}

#[test]
fn watch_on_a_missing_bucket_exits_3_with_the_reason() {
    let env = TestEnv::new(Kind::S3sFs);
    let tree = env.tree().display().to_string();
    let run = env
        .s3ma(&["watch", &tree, "s3://no-such-bucket-s3ma/x"])
        .code(3);
    assert!(run.stderr.contains("no-such-bucket-s3ma"), "{run}");
}

#[test]
fn replaced_files_and_directories_leave_nothing_behind() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        for i in 0..4 {
            env.write(&format!("site/old{i}.html"), format!("old page {i}"));
        }
        env.write("f", "a file that becomes a directory");
        env.write("d/x.txt", "a directory that becomes a file");
        env.write("d/y/z.txt", "deeper");
        let mut w = env.watch(&["--delete"]);
        w.ready();
        env.converge(WITHIN, &|| w.logs());

        // A deploy that swaps the whole directory in one go.
        std::fs::remove_dir_all(env.tree().join("site")).expect("rm -r");
        env.write("site/index.html", "the new site");
        std::fs::remove_file(env.tree().join("f")).expect("rm");
        env.write("f/inside.txt", "now a directory");
        // s3s-fs keeps a key's "directories" on its disk after their
        // objects are deleted, so it cannot store a key "d" after "d/x.txt"
        // (InternalError); S3 and moto can.
        if kind == Kind::Moto {
            std::fs::remove_dir_all(env.tree().join("d")).expect("rm -r");
            env.write("d", "now a file");
        }
        env.converge(WITHIN, &|| w.logs());
        assert_eq!(w.term(), 0);
    }
}

#[test]
fn a_failed_start_says_it_is_retried_and_the_retry_is_named_so() {
    let mut server = OwnServer::start();
    let env = TestEnv::on(Kind::S3sFs, &server.endpoint());
    env.write("a.txt", "waiting for the server");
    server.down();
    let mut w = env.watch(&["--connect-timeout", "1", "--retries", "1"]);
    let ready = w.wait_for("ready", Duration::from_secs(60));
    let text = ready["message"].as_str().unwrap_or_default();
    assert!(
        text.contains("initial reconcile failed, and is retried,"),
        "{ready}"
    );
    let error = w.wait_for("error", WITHIN);
    let message = error["message"].as_str().unwrap_or_default();
    let wait = message
        .split("retrying in ")
        .nth(1)
        .unwrap_or_else(|| panic!("no wait in {error}"));
    assert!(
        !wait.starts_with("0 s") && !wait.starts_with("0.0 s"),
        "{error}"
    );
    server.up();
    let reconcile = w.wait_for("reconcile", Duration::from_secs(120));
    assert_eq!(reconcile["reason"], "retry", "{}", w.logs());
    env.converge(WITHIN, &|| w.logs());
    assert_eq!(w.term(), 0);
}
