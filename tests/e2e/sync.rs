//! `s3ma sync`: what lands in the bucket, change detection, deletes and
//! their guards, dry runs, filters, multipart.

use crate::harness::*;

#[test]
fn first_sync_uploads_keys_bytes_types_and_metadata() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("index.html", "<h1>hello</h1>");
        env.write("css/site.css", "body { color: red }");
        env.write("deep/a/b/c/data.json", "{\"x\": 1}");
        let empty = env.write("empty.txt", "");
        set_mtime(&empty, 1_600_000_000);
        let run = env.sync(&[]).ok();
        assert_eq!(run.summary()["uploaded"], 4, "{run}");
        env.assert_mirrors(&[
            "index.html",
            "css/site.css",
            "deep/a/b/c/data.json",
            "empty.txt",
        ]);

        let (ctype, meta, _) = env.head("site/index.html");
        assert!(ctype.starts_with("text/html"), "{kind:?}: {ctype}");
        assert_eq!(meta["md5chksum"], md5_b64(b"<h1>hello</h1>"), "{kind:?}");
        let (ctype, _, _) = env.head("site/css/site.css");
        assert!(ctype.starts_with("text/css"), "{kind:?}: {ctype}");
        let (ctype, _, _) = env.head("site/deep/a/b/c/data.json");
        assert_eq!(ctype, "application/json", "{kind:?}");

        let (_, meta, _) = env.head("site/empty.txt");
        assert_eq!(meta["mtime"], "1600000000.000000000", "{kind:?}");
        assert_eq!(meta["md5chksum"], md5_b64(b""), "{kind:?}");
    }
}

#[test]
fn second_sync_uploads_nothing() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        for i in 0..30 {
            env.write(&format!("d{}/f{i}.txt", i % 3), format!("file {i}"));
        }
        env.sync(&["--delete"]).ok();
        let run = env.sync(&["--delete"]).ok();
        let s = run.summary();
        assert_eq!(
            (s["uploaded"].as_u64(), s["deleted"].as_u64()),
            (Some(0), Some(0)),
            "{run}"
        );
        assert_eq!(s["skipped"], 30, "{run}");
    }
}

#[test]
fn without_state_the_bucket_metadata_avoids_reuploads() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("a.txt", "alpha");
        env.write("b/c.txt", "gamma");
        env.sync(&[]).ok();
        std::fs::remove_dir_all(env.state_dir()).expect("drop state");
        let run = env.sync(&[]).ok();
        assert_eq!(run.summary()["uploaded"], 0, "{kind:?}: {run}");
        // A corrupt database is replaced with a warning and changes nothing.
        for entry in std::fs::read_dir(env.state_dir()).expect("state dir") {
            let p = entry.expect("entry").path();
            if p.extension().is_some_and(|e| e == "db") {
                std::fs::write(&p, "garbage garbage garbage garbage garbage").expect("corrupt");
            }
        }
        let run = env.sync(&[]).ok();
        assert_eq!(run.summary()["uploaded"], 0, "{kind:?}: {run}");
        assert!(run.stderr.contains("could not be read"), "{run}");
    }
}

#[test]
fn same_size_edit_with_new_mtime_is_uploaded() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let p = env.write("page.html", "version-1");
        set_mtime(&p, 1_700_000_000);
        env.sync(&[]).ok();
        std::fs::write(&p, "version-2").expect("edit");
        set_mtime(&p, 1_700_000_100);
        let run = env.sync(&[]).ok();
        assert_eq!(run.actions("upload"), ["site/page.html"], "{kind:?}: {run}");
        env.assert_mirrors(&["page.html"]);
        let (_, meta, _) = env.head("site/page.html");
        assert_eq!(meta["mtime"], "1700000100.000000000");
    }
}

#[test]
fn touched_file_with_same_content_is_not_uploaded() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let p = env.write("same.txt", "unchanged content");
        set_mtime(&p, 1_700_000_000);
        env.sync(&[]).ok();
        set_mtime(&p, 1_700_000_500);
        let run = env.sync(&["-v"]).ok();
        assert_eq!(run.summary()["uploaded"], 0, "{kind:?}: {run}");
        // A changed size is uploaded without hashing.
        std::fs::write(&p, "longer unchanged content").expect("edit");
        let run = env.sync(&[]).ok();
        assert_eq!(run.actions("upload"), ["site/same.txt"], "{run}");
        env.assert_mirrors(&["same.txt"]);
    }
}

#[test]
fn object_replaced_behind_our_back_is_restored() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("x.txt", "local truth");
        env.sync(&[]).ok();
        // s3s-fs lists no ETags, so there only a size change is visible
        // without a HEAD per object; moto's ETags reveal a same-size swap.
        let other: &[u8] = if kind == Kind::Moto {
            b"other bytes"
        } else {
            b"other bytes!"
        };
        env.put("site/x.txt", other);
        let run = env.sync(&[]).ok();
        assert_eq!(run.actions("upload"), ["site/x.txt"], "{kind:?}: {run}");
        env.assert_mirrors(&["x.txt"]);
    }
}

#[test]
fn delete_removes_remote_extras_only_when_asked() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("keep.txt", "keep");
        env.write("old/gone.txt", "gone");
        env.sync(&[]).ok();
        std::fs::remove_dir_all(env.tree().join("old")).expect("rm");
        env.put("site/stray.bin", b"stray");
        env.put("outside/other.txt", b"not under the prefix");

        let run = env.sync(&[]).ok();
        assert!(run.actions("delete").is_empty(), "{run}");
        assert!(env.keys().contains(&"site/old/gone.txt".to_string()));

        let run = env.sync(&["--delete"]).ok();
        assert_eq!(
            run.actions("delete"),
            ["site/old/gone.txt", "site/stray.bin"],
            "{run}"
        );
        assert_eq!(
            env.keys(),
            ["outside/other.txt", "site/keep.txt"],
            "{kind:?}"
        );
    }
}

#[test]
fn delete_guard_refuses_on_an_empty_or_missing_directory() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("a.txt", "a");
        env.write("b.txt", "b");
        env.sync(&[]).ok();
        for f in ["a.txt", "b.txt"] {
            std::fs::remove_file(env.tree().join(f)).expect("rm");
        }
        let run = env.sync(&["--delete"]).code(3);
        assert!(run.stderr.contains("refusing to delete 2 objects"), "{run}");
        assert!(run.stderr.contains("nothing was deleted"), "{run}");
        assert_eq!(env.keys().len(), 2, "{kind:?}");

        std::fs::remove_dir(env.tree()).expect("rmdir");
        let run = env.sync(&["--delete"]).code(3);
        assert!(run.stderr.contains("does not exist"), "{run}");
        assert_eq!(env.keys().len(), 2, "{kind:?}");
    }
}

#[test]
fn max_delete_caps_deletions() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        for i in 0..5 {
            env.write(&format!("f{i}"), "x");
        }
        env.write("stay", "x");
        env.sync(&[]).ok();
        for i in 0..5 {
            std::fs::remove_file(env.tree().join(format!("f{i}"))).expect("rm");
        }
        let run = env.sync(&["--delete", "--max-delete", "4"]).code(3);
        assert!(run.stderr.contains("--max-delete"), "{run}");
        assert_eq!(env.keys().len(), 6, "{kind:?}");
        let run = env.sync(&["--delete", "--max-delete", "5"]).ok();
        assert_eq!(run.summary()["deleted"], 5, "{run}");
        assert_eq!(env.keys(), ["site/stay"]);
    }
}

#[test]
fn dry_run_prints_actions_and_changes_nothing() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("new.txt", "n");
        env.put("site/extra.txt", b"e");
        let run = env.sync(&["--dry-run", "--delete"]).ok();
        assert_eq!(run.actions("upload"), ["site/new.txt"], "{run}");
        assert_eq!(run.actions("delete"), ["site/extra.txt"], "{run}");
        assert_eq!(env.keys(), ["site/extra.txt"], "{kind:?}");
        // Text mode says "would".
        let tree = env.tree().display().to_string();
        let run = env
            .s3ma(&["sync", &tree, &env.dest(), "--dry-run", "--delete"])
            .ok();
        assert!(run.stdout.contains("would upload site/new.txt"), "{run}");
        assert!(run.stdout.contains("would delete site/extra.txt"), "{run}");
        assert_eq!(env.keys(), ["site/extra.txt"], "{kind:?}");
    }
}

#[test]
fn hidden_files_and_directories_are_skipped_unless_asked() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("visible.txt", "v");
        env.write(".env", "SECRET=1");
        env.write(".git/config", "[core]");
        env.write("sub/.cache/blob", "b");
        env.write("sub/ok.txt", "ok");
        env.sync(&[]).ok();
        env.assert_mirrors(&["sub/ok.txt", "visible.txt"]);
        // --delete never removes what the filters hide.
        env.put("site/.well-known/x", b"kept");
        env.sync(&["--delete"]).ok();
        assert!(
            env.keys().contains(&"site/.well-known/x".to_string()),
            "{kind:?}"
        );
        let run = env.sync(&["--include-hidden"]).ok();
        assert_eq!(
            run.actions("upload"),
            ["site/.env", "site/.git/config", "site/sub/.cache/blob"],
            "{run}"
        );
    }
}

#[test]
fn excludes_and_s3maignore_filter_paths() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("app.log", "log");
        env.write("keep.txt", "k");
        env.write("cache/page", "c");
        env.write("src/node_modules/x.js", "x");
        env.write("src/main.js", "m");
        env.write("tmp/scratch", "s");
        env.write(".s3maignore", "# comment\ntmp/\n**/node_modules\n");
        let run = env
            .sync(&["--exclude", "*.log", "--exclude", "cache/"])
            .ok();
        assert_eq!(
            run.actions("upload"),
            ["site/keep.txt", "site/src/main.js"],
            "{run}"
        );
        env.assert_mirrors(&["keep.txt", "src/main.js"]);
    }
}

#[test]
fn multipart_upload_is_correct_and_leaves_no_parts() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let data: Vec<u8> = (0..(12u32 << 20) + 12345)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        env.write("big.bin", &data);
        env.write("small.txt", "s");
        let run = env
            .sync(&[
                "--multipart-threshold",
                "5MiB",
                "--multipart-chunk-size",
                "5MiB",
            ])
            .ok();
        assert_eq!(run.summary()["uploaded"], 2, "{run}");
        env.assert_mirrors(&["big.bin", "small.txt"]);
        let (_, meta, etag) = env.head("site/big.bin");
        assert_eq!(meta["md5chksum"], md5_b64(&data), "{kind:?}");
        if let Some(etag) = etag {
            assert!(
                etag.ends_with("-3"),
                "{kind:?}: a 3-part upload, got ETag {etag}"
            );
        }
        if kind == Kind::Moto {
            let uploads = block_on(
                env.client
                    .list_multipart_uploads()
                    .bucket(&env.bucket)
                    .send(),
            )
            .expect("list uploads");
            assert!(uploads.uploads().is_empty(), "no incomplete uploads");
        }
        // Unchanged: nothing is sent again.
        let run = env
            .sync(&[
                "--multipart-threshold",
                "5MiB",
                "--multipart-chunk-size",
                "5MiB",
            ])
            .ok();
        assert_eq!(run.summary()["uploaded"], 0, "{run}");
    }
}

#[test]
fn text_output_summary_and_quiet_mode() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let tree = env.tree().display().to_string();
    let run = env.s3ma(&["sync", &tree, &env.dest()]).ok();
    assert!(run.stdout.contains("upload site/a.txt"), "{run}");
    assert!(
        run.stdout
            .contains("scanned 1, uploaded 1 (1 B), deleted 0, skipped 0, failed 0"),
        "{run}"
    );
    env.write("b.txt", "b");
    let run = env.s3ma(&["-q", "sync", &tree, &env.dest()]).ok();
    assert_eq!(run.stdout, "", "{run}");
    assert_eq!(run.stderr, "", "{run}");
    assert_eq!(env.keys(), ["site/a.txt", "site/b.txt"]);
    // -v after the command works too.
    let run = env.s3ma(&["sync", &tree, &env.dest(), "-v"]).ok();
    assert!(run.stdout.contains("skip site/a.txt (unchanged)"), "{run}");
}

#[test]
fn prefix_is_a_folder_and_an_empty_prefix_is_the_bucket_root() {
    let env = TestEnv::new(Kind::Moto);
    env.write("a.txt", "a");
    let tree = env.tree().display().to_string();
    let without_slash = format!("s3://{}/site", env.bucket);
    env.s3ma(&["sync", &tree, &without_slash]).ok();
    let run = env.sync(&[]).ok();
    assert_eq!(
        run.summary()["uploaded"],
        0,
        "s3://b/site and s3://b/site/ are the same: {run}"
    );
    let root = format!("s3://{}", env.bucket);
    env.s3ma(&["sync", &tree, &root]).ok();
    assert_eq!(env.keys(), ["a.txt", "site/a.txt"]);
}

#[test]
fn second_sync_of_the_same_pair_exits_already_running() {
    // A server that accepts connections and never answers keeps the first
    // run busy while it holds the lock.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hold = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(64) {
            match c {
                Ok(c) => conns.push(c),
                Err(_) => break,
            }
        }
    });
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let tree = env.tree().display().to_string();
    let url = format!("http://127.0.0.1:{port}");
    let dest = env.dest();
    let mut first = env.command();
    first
        .args([
            "sync",
            &tree,
            &dest,
            "--endpoint",
            &url,
            "--read-timeout",
            "30",
            "--retries",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = first.spawn().expect("spawn");
    // The first run holds the lock once its lock file exists.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let has_lock = || {
        std::fs::read_dir(env.state_dir())
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.path().extension().is_some_and(|x| x == "lock"))
            })
            .unwrap_or(false)
    };
    while !has_lock() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut c = env.command();
    c.args([
        "sync",
        &tree,
        &dest,
        "--endpoint",
        &url,
        "--connect-timeout",
        "2",
        "--read-timeout",
        "2",
        "--retries",
        "1",
    ]);
    let second = TestEnv::run_cmd(c);
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the first run should still be waiting on the silent server"
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(hold);
    let second = second.code(4);
    assert!(second.stderr.contains("already running"), "{second}");
}

#[test]
fn interrupt_finishes_in_flight_uploads_saves_state_and_exits_130() {
    use std::io::BufRead;
    let env = TestEnv::new(Kind::S3sFs);
    for i in 0..600 {
        env.write(&format!("d{}/f{i}.txt", i % 10), format!("file {i}"));
    }
    let tree = env.tree().display().to_string();
    let mut cmd = env.command();
    cmd.args(["sync", &tree, &env.dest(), "--json", "--concurrency", "1"])
        .args(["--endpoint", &env.endpoint])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    assert!(first.contains("\"upload\""), "{first}");
    // The shell's own kill: no procps needed.
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .expect("kill");
    assert!(status.success());
    let rest: Vec<String> = lines.map(|l| l.expect("utf-8")).collect();
    let code = child.wait().expect("wait").code();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(rest.last().expect("summary line")).expect("json");
    assert_eq!(summary["action"], "summary");
    let done = summary["uploaded"].as_u64().expect("count");
    assert!(done < 600, "stopped early: {summary}");
    // Every object the run reported is in the bucket, whole, and the next
    // run uploads only the rest.
    assert_eq!(env.keys().len() as u64, done);
    let run = env.sync(&[]).ok();
    assert_eq!(
        run.summary()["uploaded"].as_u64(),
        Some(600 - done),
        "{run}"
    );
    env.assert_mirrors(
        &(0..600)
            .map(|i| format!("d{}/f{i}.txt", i % 10))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
}

#[test]
fn storage_class_is_applied() {
    let env = TestEnv::new(Kind::Moto);
    env.write("cold.txt", "cold");
    env.sync(&["--storage-class", "STANDARD_IA"]).ok();
    let head = block_on(
        env.client
            .head_object()
            .bucket(&env.bucket)
            .key("site/cold.txt")
            .send(),
    )
    .expect("head");
    assert_eq!(
        head.storage_class().map(|c| c.as_str()),
        Some("STANDARD_IA")
    );
}

#[test]
fn progress_line_only_on_a_terminal() {
    let env = TestEnv::new(Kind::S3sFs);
    for i in 0..400 {
        env.write(&format!("p/f{i}.txt"), "x");
    }
    let tree = env.tree().display().to_string();
    let dest = env.dest();
    // Not a terminal: no progress line.
    let run = env
        .s3ma(&["sync", &tree, &dest, "--concurrency", "1", "--dry-run"])
        .ok();
    assert!(!run.stderr.contains("scanned"), "{run}");
    // Under a pseudo-terminal (script(1)), the progress line is drawn.
    let inner = format!(
        "{} sync {tree} {dest} --endpoint {} --concurrency 1",
        env!("CARGO_BIN_EXE_s3ma"),
        env.endpoint
    );
    let mut script = env.command_for("script");
    script.args(["-qec", &inner, "/dev/null"]);
    let run = TestEnv::run_cmd(script).ok();
    assert!(run.stdout.contains("\r\x1b[Kscanned "), "{run}");
    assert_eq!(env.keys().len(), 400);
}

#[test]
fn failed_uploads_hold_back_deletions() {
    // s3s-fs cannot store a key component this long (a server-side
    // failure for one file); the old name of a "renamed" file must stay.
    let env = TestEnv::new(Kind::S3sFs);
    env.write("keep.txt", "k");
    env.write("old-name.txt", "content");
    env.sync(&[]).ok();
    std::fs::remove_file(env.tree().join("old-name.txt")).expect("rm");
    env.write(&"n".repeat(240), "content");
    let run = env.sync(&["--delete"]).code(1);
    assert_eq!(run.summary()["failed"], 1, "{run}");
    assert!(
        run.stderr
            .contains("not deleting 1 objects because 1 uploads failed"),
        "{run}"
    );
    let keys = env.keys();
    assert!(keys.contains(&"site/old-name.txt".to_string()), "{keys:?}");
}

#[test]
fn a_file_rewritten_during_its_upload_never_lands_torn() {
    use std::io::{Seek, SeekFrom, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    for (name, size, extra) in [
        // Multipart: parts read at different moments.
        (
            "big.bin",
            12_000_000usize,
            vec![
                "--multipart-threshold",
                "5MiB",
                "--multipart-chunk-size",
                "5MiB",
            ],
        ),
        // A single PUT streamed from disk.
        ("medium.bin", 1_500_000usize, vec![]),
    ] {
        let env = TestEnv::new(Kind::S3sFs);
        let path = env.write(name, vec![b'A'; size]);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open");
                let mut fill = b'B';
                while !stop.load(Ordering::SeqCst) {
                    // Overwrite in place, in chunks: the file is never one
                    // version for long.
                    for chunk in 0..(size / 100_000) {
                        f.seek(SeekFrom::Start((chunk * 100_000) as u64))
                            .expect("seek");
                        f.write_all(&[fill; 100_000]).expect("write");
                    }
                    fill = if fill == b'A' { b'B' } else { b'A' };
                }
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        let run = env.sync(&extra);
        stop.store(true, Ordering::SeqCst);
        writer.join().expect("writer");
        let key = format!("{}{name}", env.prefix);
        if let Some(bytes) = env.objects().get(&key) {
            assert!(
                bytes.len() == size
                    && (bytes.iter().all(|b| *b == b'A') || bytes.iter().all(|b| *b == b'B')),
                "{name}: the object mixes two versions of the file: {run}"
            );
        }
        // Quiet again: the next run sends the file as it now is.
        env.sync(&extra).ok();
        env.converge(std::time::Duration::ZERO, &|| run.to_string());
    }
}
