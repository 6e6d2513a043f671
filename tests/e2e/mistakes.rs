//! The mistakes users meet first: each is a clear error with the right
//! exit code that changes nothing, found before any request where it can
//! be.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Writes `./conf/config.json` in the test's working directory, as a
/// clone or an old node-s3ma install would have it.
fn local_config(env: &TestEnv, body: &str) {
    let dir = env.work().join("conf");
    std::fs::create_dir_all(&dir).expect("mkdir conf");
    let path = dir.join("config.json");
    write_file(&path, body);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn the_example_config_is_never_read_by_accident() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        !repo.join("conf/config.json").exists(),
        "a conf/config.json in the repository is read by every run started there"
    );
    // The example still has node-s3ma's shape, and is read when named.
    let env = TestEnv::new(Kind::S3sFs);
    let example = repo.join("conf/config.example.json");
    let mut cmd = env.command();
    cmd.current_dir(repo)
        .args(["ls", "--endpoint", &env.endpoint]);
    TestEnv::run_cmd(cmd).ok();
    let mut cmd = env.command();
    cmd.current_dir(repo).args([
        "--config",
        &example.display().to_string(),
        "ls",
        "--endpoint",
        &env.endpoint,
    ]);
    let run = TestEnv::run_cmd(cmd).code(3);
    assert!(run.stderr.contains("config.example.json"), "{run}");
}

#[test]
fn rejected_credentials_name_where_the_keys_came_from() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    local_config(
        &env,
        r#"{"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "change-me"}"#,
    );
    // Valid keys in the environment lose to the file's, as in node-s3ma:
    // the message says so, and why the file was read.
    let run = env.s3ma(&["ls"]).code(3);
    assert!(run.stderr.contains("rejected the credentials"), "{run}");
    assert!(run.stderr.contains("conf/config.json"), "{run}");
    assert!(
        run.stderr
            .contains("read because it is in the current directory"),
        "{run}"
    );
    assert!(run.stderr.contains("AWS_ACCESS_KEY_ID"), "{run}");
    assert!(!run.all().contains("change-me"), "secret shown: {run}");
    std::fs::remove_dir_all(env.work().join("conf")).expect("rm conf");
    // Wrong keys in the environment are named as such.
    let mut cmd = env.command();
    cmd.env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["ls", "--endpoint", &env.endpoint]);
    let run = TestEnv::run_cmd(cmd).code(3);
    assert!(
        run.stderr
            .contains("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment"),
        "{run}"
    );
}

#[test]
fn watch_stops_at_start_on_rejected_credentials() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    for (id, secret) in [("AKIAEXAMPLE", "change-me"), (ACCESS_KEY, "wrong")] {
        let mut cmd = env.command();
        cmd.env("AWS_ACCESS_KEY_ID", id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .args([
                "watch",
                &env.tree().display().to_string(),
                &env.dest(),
                "--endpoint",
                &env.endpoint,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn watch");
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("watch kept running with rejected credentials ({id})");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let out = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("rejected the credentials"), "{stderr}");
        assert!(!stderr.contains("retrying"), "{stderr}");
    }
    assert!(env.keys().is_empty());
}

#[test]
fn the_2014_region_spelling_names_the_right_one() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    local_config(
        &env,
        &format!(
            r#"{{"watchDir": "{}", "region": "ap-northeast1", "bucket": "my-site-backup",
                "topPrefix": "www/"}}"#,
            env.tree().display()
        ),
    );
    let mut cmd = env.command();
    cmd.arg("sync");
    let run = TestEnv::run_cmd(cmd).code(2);
    assert!(
        run.stderr.contains("'ap-northeast1'")
            && run.stderr.contains("did you mean ap-northeast-1?"),
        "{run}"
    );
    assert!(!run.stderr.contains("topPrefixSync"), "{run}");
    assert!(!run.stderr.contains("resolve"), "{run}");
    assert_eq!(run.stderr.lines().count(), 1, "{run}");
}

#[test]
fn prefixes_no_tool_can_restore_are_refused() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let tree = env.tree().display().to_string();
    for (prefix, shows) in [
        ("../x", "s3://BUCKET/x"),
        ("a/./b/../c", "s3://BUCKET/a/c"),
        ("/x", "s3://BUCKET/x"),
        ("a//b", "s3://BUCKET/a/b"),
    ] {
        let dest = format!("s3://{}/{prefix}", env.bucket);
        let run = env.s3ma(&["sync", &tree, &dest]).code(2);
        let want = shows.replace("BUCKET", &env.bucket);
        assert!(run.stderr.contains(&want), "{prefix}: {run}");
    }
    assert!(env.keys().is_empty(), "{:?}", env.keys());
}

#[test]
fn bucket_names_are_checked_before_any_request() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let tree = env.tree().display().to_string();
    // AWS: its rules, locally (nothing listens for AWS here).
    for (dest, want) in [
        ("s3://BAD/x", "only lowercase letters"),
        ("s3://b", "3 to 63"),
    ] {
        let mut cmd = env.command();
        cmd.args(["sync", &tree, dest, "--region", "us-east-1"]);
        let run = TestEnv::run_cmd(cmd).code(2);
        assert!(
            run.stderr.contains("on AWS S3") && run.stderr.contains(want),
            "{run}"
        );
    }
    // A custom endpoint decides its own rules; its refusal is still a
    // configuration error, said plainly.
    let run = env.s3ma(&["sync", &tree, "s3://BAD/x"]).code(2);
    assert!(
        run.stderr.contains("refused the bucket name 'BAD'"),
        "{run}"
    );
}

#[test]
fn other_usage_mistakes_exit_2() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let tree = env.tree().display().to_string();
    let mut cmd = env.command();
    cmd.args([
        "sync",
        &tree,
        &env.dest(),
        "--endpoint",
        "http://127.0.0.1:99999",
    ]);
    let run = TestEnv::run_cmd(cmd).code(2);
    assert!(run.stderr.contains("port '99999'"), "{run}");
    let file = env.work().join("state-file");
    write_file(&file, "not a directory");
    let run = env
        .s3ma(&[
            "sync",
            &tree,
            &env.dest(),
            "--state-dir",
            &file.display().to_string(),
        ])
        .code(2);
    assert!(run.stderr.contains("is a file, not a directory"), "{run}");
    let mut cmd = env.command();
    cmd.args(["ls", "--endpoint", "http://key:hunter2@127.0.0.1:9000"]);
    let run = TestEnv::run_cmd(cmd).code(2);
    assert!(!run.all().contains("hunter2"), "{run}");
    assert!(run.stderr.contains("user name or password"), "{run}");
    // Empty variables are unset ones, as systemd's `Environment=X=` makes.
    let mut cmd = env.command();
    cmd.env("S3MA_CONFIG", "")
        .args(["ls", "--endpoint", &env.endpoint]);
    TestEnv::run_cmd(cmd).ok();
    let run = env
        .s3ma(&["sync", &tree, &env.dest(), "--profile", "nosuch"])
        .code(2);
    assert!(run.stderr.contains("profile 'nosuch'"), "{run}");
    assert!(env.keys().is_empty());
}

#[test]
fn dry_run_lists_every_deletion_a_guard_refuses() {
    let env = TestEnv::new(Kind::S3sFs);
    for f in ["keep.txt", "a.txt", "b.txt", "c.txt"] {
        env.write(f, f);
    }
    env.sync(&[]).ok();
    for f in ["a.txt", "b.txt", "c.txt"] {
        std::fs::remove_file(env.tree().join(f)).expect("rm");
    }
    let run = env
        .sync(&["--delete", "--max-delete", "1", "--dry-run"])
        .code(3);
    assert_eq!(
        run.actions("delete"),
        ["site/a.txt", "site/b.txt", "site/c.txt"],
        "{run}"
    );
    assert!(run.stderr.contains("more than --max-delete 1"), "{run}");
    assert_eq!(env.keys().len(), 4, "a dry run deletes nothing");
    // The same in text.
    let tree = env.tree().display().to_string();
    let run = env
        .s3ma(&[
            "sync",
            &tree,
            &env.dest(),
            "--delete",
            "--max-delete",
            "1",
            "-n",
        ])
        .code(3);
    assert_eq!(run.stdout.matches("would delete site/").count(), 3, "{run}");
}

#[test]
fn json_fatal_errors_are_on_stdout_too() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let tree = env.tree().display().to_string();
    let fatal = |run: &Run| -> String {
        run.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["action"] == "fatal")
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no fatal line on stdout:\n{run}"))
    };
    // A configuration error, before any request.
    let mut cmd = env.command();
    cmd.args([
        "sync",
        "--json",
        &tree,
        &env.dest(),
        "--endpoint",
        "http://h:99999",
    ]);
    let run = TestEnv::run_cmd(cmd).code(2);
    assert!(fatal(&run).contains("port '99999'"), "{run}");
    // An error from the server.
    let run = env
        .s3ma(&["sync", "--json", &tree, "s3://no-such-bucket-here/x"])
        .code(3);
    assert!(fatal(&run).contains("no-such-bucket-here"), "{run}");
}

#[test]
fn an_mtime_past_2262_is_said() {
    let env = TestEnv::new(Kind::S3sFs);
    let path = env.write("future.txt", "from the future");
    // 2300-01-01.
    set_mtime(&path, 10_413_792_000);
    let run = env.sync(&[]).ok();
    assert!(run.stdout.contains("after 2262-04-11"), "{run}");
    assert_eq!(env.keys(), ["site/future.txt"]);
    // Mirrored all the same: not counted as skipped.
    assert_eq!(run.summary()["skipped"], 0, "{run}");
    // It stays a note, not a change: the next run has nothing to do.
    let run = env.sync(&[]).ok();
    assert_eq!(run.summary()["uploaded"], 0, "{run}");
}

/// A tmpfs mounted inside the tree, unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn one_file_system_stays_on_the_root_s_file_system() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("here.txt", "on the root's file system");
    let mnt = env.tree().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        eprintln!("one_file_system_stays_on_the_root_s_file_system: needs root to mount; skipped");
        return;
    }
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "s3ma-test", &mnt.display().to_string()])
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount -t tmpfs failed as root");
    let _mount = Mount(mnt.clone());
    write_file(&mnt.join("other.txt"), "on another file system");
    env.sync(&["-x"]).ok();
    assert_eq!(env.keys(), ["site/here.txt"]);
    env.sync(&[]).ok();
    assert_eq!(env.keys(), ["site/here.txt", "site/mnt/other.txt"]);
    // With the flag again and --delete, what is across the boundary is
    // left out, and its objects kept: its absence here proves nothing.
    let run = env.sync(&["--one-file-system", "--delete"]).ok();
    assert_eq!(env.keys(), ["site/here.txt", "site/mnt/other.txt"], "{run}");
    assert!(run.stdout.contains("on another file system"), "{run}");
    // watch too: changes across the boundary are not mirrored.
    let mut w = env.watch(&["-x", "-v"]);
    w.ready();
    write_file(&mnt.join("later.txt"), "written across the boundary");
    env.write("later.txt", "written on the root's file system");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(env.keys().contains(&"site/later.txt".to_string()) && w.idle()) {
        assert!(Instant::now() < deadline, "not mirrored:\n{}", w.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        env.keys(),
        ["site/here.txt", "site/later.txt", "site/mnt/other.txt"],
        "{}",
        w.logs()
    );
    assert_eq!(w.term(), 0, "{}", w.logs());
}

#[test]
fn an_unknown_storage_class_stops_the_run_once() {
    let env = TestEnv::new(Kind::Moto);
    for i in 0..5 {
        env.write(&format!("f{i}.txt"), "x");
    }
    let tree = env.tree().display().to_string();
    // moto checks the class as AWS does: one error for the run, not one
    // per file.
    let run = env
        .s3ma(&["sync", &tree, &env.dest(), "--storage-class", "BOGUS"])
        .code(2);
    assert_eq!(
        run.stderr.matches("InvalidStorageClass").count(),
        1,
        "{run}"
    );
    assert!(run.stderr.contains("--storage-class"), "{run}");
    // On AWS it is found before any request.
    let mut cmd = env.command();
    cmd.args(["sync", &tree, "s3://some-bucket/x", "--region", "eu-west-1"])
        .args(["--storage-class", "STANDARD_AI"]);
    let run = TestEnv::run_cmd(cmd).code(2);
    assert!(run.stderr.contains("did you mean STANDARD_IA?"), "{run}");
}

#[test]
fn verbose_says_what_the_filters_leave_out() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("index.html", "home");
    env.write(".env", "hidden");
    env.write("notes.txt~", "an editor's backup");
    env.write("cache/a.bin", "excluded directory");
    env.write("debug.log", "excluded file");
    let run = env
        .sync(&["-v", "--exclude", "cache/", "--exclude", "*.log"])
        .ok();
    let skips: Vec<(String, String)> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["action"] == "skip")
        .map(|v| {
            (
                v["key"].as_str().unwrap_or_default().to_string(),
                v["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let reason = |key: &str| {
        skips
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no skip line for {key}:\n{run}"))
    };
    assert!(reason("site/.env").contains("hidden"), "{run}");
    assert!(reason("site/notes.txt~").contains("temporary"), "{run}");
    assert!(reason("site/cache/").contains("excluded"), "{run}");
    assert!(reason("site/debug.log").contains("excluded"), "{run}");
    assert_eq!(run.summary()["skipped"], 4, "{run}");
    assert_eq!(env.keys(), ["site/index.html"]);
    // A tree of excluded files alone is still an empty tree for the guard.
    std::fs::remove_file(env.tree().join("index.html")).expect("rm");
    let run = env
        .sync(&["--delete", "--exclude", "cache/", "--exclude", "*.log"])
        .code(3);
    assert!(run.stderr.contains("has nothing to mirror"), "{run}");
    assert_eq!(env.keys(), ["site/index.html"]);
}

#[test]
fn dry_run_says_a_copying_destination_would_copy() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "alpha");
    let second = env.second(Kind::S3sFs, &env.endpoint, "copy/");
    let config = env.work().join("config.json");
    write_file(
        &config,
        &format!(
            r#"{{"watchDir": "{}", "bucket": "{}", "topPrefix": "site/",
                "destinations": [{{"name": "cp", "bucket": "{}", "prefix": "copy/"}}]}}"#,
            env.tree().display(),
            env.bucket,
            second.bucket
        ),
    );
    let config = config.display().to_string();
    let run = env.s3ma(&["--config", &config, "sync", "-n"]).ok();
    assert!(run.stdout.contains("would upload site/a.txt"), "{run}");
    let want = format!(
        "[cp] would copy copy/a.txt from s3://{}/site/a.txt",
        env.bucket
    );
    assert!(run.stdout.contains(&want), "{run}");
    assert!(!run.stdout.contains("[cp] would upload"), "{run}");
    assert!(env.keys().is_empty() && second.listing().is_empty());
    // And the real run does what the dry run said.
    let run = env.s3ma(&["--config", &config, "sync", "--json"]).ok();
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains(r#""action":"copy""#) && l.contains(r#""dest":"cp""#)),
        "{run}"
    );
}
