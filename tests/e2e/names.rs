//! File names: special characters, byte order, names that cannot be keys,
//! symlinks and special files.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::harness::*;

const TRICKY: &[&str] = &[
    "a b.txt",
    "plus+sign.txt",
    "percent%20.txt",
    "hash#.txt",
    "question?.txt",
    "quote'.txt",
    "amp&eq=.txt",
    "日本語/ファイル.txt",
    "emoji-🎉.txt",
    "B.txt",
    "a-b.txt",
    "a.txt",
    "a/b.txt",
    "a0.txt",
    "dir with space/inner file.txt",
    "tab\there.txt",
];

#[test]
fn special_characters_and_byte_order_round_trip() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        for name in TRICKY {
            env.write(name, format!("content of {name}"));
        }
        let run = env.sync(&["--delete"]).ok();
        assert_eq!(run.summary()["uploaded"], TRICKY.len(), "{run}");
        env.assert_mirrors(TRICKY);
        // Had the walk and the listing been merged in different orders, the
        // second run would re-upload or delete something.
        let run = env.sync(&["--delete"]).ok();
        let s = run.summary();
        assert_eq!(
            (s["uploaded"].as_u64(), s["deleted"].as_u64()),
            (Some(0), Some(0)),
            "{kind:?}: {run}"
        );
    }
}

#[test]
fn non_utf8_name_is_reported_and_skipped_and_the_rest_is_synced() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("good.txt", "good");
        let bad = env.tree().join(OsStr::from_bytes(b"caf\xe9.txt"));
        std::fs::write(&bad, "latin-1 name").expect("write");
        let bad_dir = env.tree().join(OsStr::from_bytes(b"dir\xff"));
        std::fs::create_dir(&bad_dir).expect("mkdir");
        std::fs::write(bad_dir.join("inside.txt"), "x").expect("write");
        let run = env.sync(&[]).code(1);
        assert!(
            run.stdout.contains("caf\u{fffd}.txt"),
            "named lossily: {run}"
        );
        assert!(run.stdout.contains("not valid UTF-8"), "{run}");
        assert!(run.stdout.contains("dir\u{fffd}"), "{run}");
        assert_eq!(run.summary()["failed"], 2, "{run}");
        env.assert_mirrors(&["good.txt"]);
        let tree = env.tree().display().to_string();
        let text = env.s3ma(&["sync", &tree, &env.dest()]).code(1);
        assert!(
            text.stderr.contains("error: ") && text.stderr.contains("caf"),
            "{text}"
        );
    }
}

#[test]
fn key_over_1024_bytes_is_reported_and_skipped() {
    let env = TestEnv::new(Kind::Moto);
    env.write("ok.txt", "ok");
    // 6 directories of 200 bytes plus a file name: over 1024 with the prefix.
    let long: Vec<String> = (0..6).map(|i| format!("{i}{}", "x".repeat(199))).collect();
    let rel = format!("{}/file.txt", long.join("/"));
    env.write(&rel, "too long");
    let run = env.sync(&[]).code(1);
    assert!(run.stdout.contains("over S3's limit of 1024"), "{run}");
    env.assert_mirrors(&["ok.txt"]);
}

#[test]
fn symlinks_are_skipped_by_default_and_followed_on_request() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("real/file.txt", "real");
        let outside = tempfile::tempdir().expect("outside");
        std::fs::write(outside.path().join("secret.txt"), "outside the root").expect("write");
        std::os::unix::fs::symlink(outside.path(), env.tree().join("link-out")).expect("symlink");
        std::os::unix::fs::symlink("real/file.txt", env.tree().join("link.txt")).expect("symlink");
        let run = env.sync(&[]).ok();
        assert!(run.stdout.contains("symlink skipped"), "{run}");
        env.assert_mirrors(&["real/file.txt"]);

        let run = env.sync(&["--follow-symlinks"]).ok();
        assert_eq!(
            run.actions("upload"),
            ["site/link-out/secret.txt", "site/link.txt"],
            "{kind:?}: {run}"
        );
        // Back to not following: the objects of the skipped links stay.
        let run = env.sync(&["--delete"]).ok();
        assert!(run.actions("delete").is_empty(), "{run}");
    }
}

#[test]
fn symlink_loop_is_reported_not_followed_forever() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("d/f.txt", "f");
    std::os::unix::fs::symlink("..", env.tree().join("d/loop")).expect("symlink");
    let run = env.sync(&["--follow-symlinks"]).code(1);
    assert!(run.stdout.contains("symlink loop"), "{run}");
    env.assert_mirrors(&["d/f.txt"]);
}

#[test]
fn fifo_is_skipped_with_a_note() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("f.txt", "f");
    let status = std::process::Command::new("mkfifo")
        .arg(env.tree().join("pipe"))
        .status()
        .expect("mkfifo");
    assert!(status.success());
    let run = env.sync(&[]).ok();
    assert!(run.stdout.contains("a FIFO"), "{run}");
    env.assert_mirrors(&["f.txt"]);
}

#[test]
fn regression_followed_dir_symlink_sorts_as_a_directory() {
    // `docs` (a link to a directory) must sort as `docs/`, after
    // `docs.html`; sorted as `docs`, the merge saw docs.html as remote-only
    // and deleted it after uploading it.
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("real/page.txt", "page");
        env.write("docs.html", "docs page");
        std::os::unix::fs::symlink("real", env.tree().join("docs")).expect("symlink");
        env.sync(&["--follow-symlinks", "--delete"]).ok();
        let run = env.sync(&["--follow-symlinks", "--delete"]).ok();
        let s = run.summary();
        assert_eq!(
            (s["uploaded"].as_u64(), s["deleted"].as_u64()),
            (Some(0), Some(0)),
            "{kind:?}: {run}"
        );
        env.assert_mirrors(&["docs.html", "docs/page.txt", "real/page.txt"]);
    }
}

#[test]
fn control_characters_xml_cannot_carry_are_reported_and_skipped() {
    let env = TestEnv::new(Kind::Moto);
    env.write("ok.txt", "ok");
    env.write("carriage\rreturn.txt", "cr");
    let run = env.sync(&[]).code(1);
    assert!(run.stdout.contains("U+000D"), "{run}");
    env.assert_mirrors(&["ok.txt"]);
}

#[test]
fn newlines_sparse_and_empty_files() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("empty.txt", "");
        // 20 MB with a few bytes at the end and a hole before them.
        let sparse = env.tree().join("sparse.bin");
        let f = std::fs::File::create(&sparse).expect("create");
        f.set_len(20_000_000).expect("set_len");
        drop(f);
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&sparse)
                .expect("open");
            f.seek(SeekFrom::Start(19_999_990)).expect("seek");
            f.write_all(b"end").expect("write");
        }
        env.write("line\nbreak.txt", "a name with a newline");
        let run = env.sync(&[]);
        let newline_key = format!("{}line\nbreak.txt", env.prefix);
        if run.code == 0 {
            // The server took the key: it round-trips.
            assert!(env.listing().contains_key(&newline_key), "{run}");
        } else {
            // The server refused the key (moto does): the file is named,
            // exit 1, and everything else is mirrored.
            assert_eq!(run.code, 1, "{run}");
            assert!(run.stdout.contains("line\\nbreak.txt"), "{run}");
            std::fs::remove_file(env.tree().join("line\nbreak.txt")).expect("rm");
        }
        let objects = env.objects();
        assert_eq!(objects[&format!("{}empty.txt", env.prefix)].len(), 0);
        let got = &objects[&format!("{}sparse.bin", env.prefix)];
        assert!(
            got.len() == 20_000_000 && got[19_999_990..19_999_993] == *b"end",
            "sparse file on {kind:?}"
        );
        assert!(
            got[..19_999_990].iter().all(|b| *b == 0),
            "the hole reads as zeros"
        );
    }
}

/// Runs s3ma as an unprivileged user when the tests run as root.
fn run_unprivileged(env: &TestEnv, args: &[&str]) -> Run {
    let mut c = env.unprivileged();
    c.args(args).args(["--endpoint", &env.endpoint]);
    TestEnv::run_cmd(c)
}

#[test]
fn unreadable_files_and_directories_are_named_and_keep_their_objects() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new(Kind::S3sFs);
    env.write("ok.txt", "readable");
    env.write("secret.txt", "unreadable later");
    env.write("locked/inner.txt", "in a directory that becomes unreadable");
    let tree = env.tree().display().to_string();
    let dest = env.dest();
    run_unprivileged(&env, &["sync", &tree, &dest, "--json"]).ok();
    assert_eq!(env.listing().len(), 3);
    let mode = |rel: &str, m: u32| {
        std::fs::set_permissions(env.tree().join(rel), std::fs::Permissions::from_mode(m))
            .expect("chmod")
    };
    // Changed, so it must be read again (an unchanged file is not read).
    env.write("secret.txt", "unreadable now, and changed");
    mode("secret.txt", 0o000);
    mode("locked", 0o000);
    env.write("new.txt", "still mirrored");
    let run = run_unprivileged(&env, &["sync", &tree, &dest, "--json", "--delete"]);
    mode("locked", 0o755);
    mode("secret.txt", 0o644);
    let run = run.code(1);
    let errors: Vec<String> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["action"] == "error")
        .map(|v| format!("{} {}", v["path"], v["message"]))
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("secret.txt"))
            && errors.iter().any(|e| e.contains("locked")),
        "each unreadable path is named: {run}"
    );
    // Nothing of theirs was deleted; the rest was mirrored.
    let keys: Vec<String> = env.listing().into_keys().collect();
    let p = &env.prefix;
    assert_eq!(
        keys,
        [
            format!("{p}locked/inner.txt"),
            format!("{p}new.txt"),
            format!("{p}ok.txt"),
            format!("{p}secret.txt")
        ],
        "{run}"
    );
}
