//! `s3ma ls`: buckets with creation dates, objects and prefixes, paging.

use crate::harness::*;

#[test]
fn ls_lists_buckets_with_iso_dates() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let run = env.s3ma(&["ls"]).ok();
        let line = run
            .stdout
            .lines()
            .find(|l| l.ends_with(&format!("  {}", env.bucket)))
            .unwrap_or_else(|| panic!("{kind:?}: bucket missing from\n{run}"));
        let date = line.split_whitespace().next().expect("date");
        assert_eq!(date.len(), "2026-11-26T16:00:00Z".len(), "{line}");
        assert!(date.ends_with('Z') && date.as_bytes()[10] == b'T', "{line}");
        // Every line is aligned: the name starts at the same column.
        let cols: Vec<usize> = run
            .stdout
            .lines()
            .map(|l| l.find("  ").expect("two spaces"))
            .collect();
        assert!(cols.windows(2).all(|w| w[0] == w[1]), "{run}");

        let run = env.s3ma(&["ls", "--json"]).ok();
        let found = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .any(|v| v["bucket"] == env.bucket.as_str() && v["created"].is_string());
        assert!(found, "{run}");
    }
}

#[test]
fn ls_shows_objects_and_dir_lines_and_pages_past_1000() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        for i in 0..1003 {
            env.write(&format!("many/f{i:04}.txt"), "x");
        }
        env.write("top.txt", "top");
        env.write("sub/inner.txt", "inner");
        env.sync(&[]).ok();

        let run = env.s3ma(&["ls", &env.dest()]).ok();
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert!(lines.iter().any(|l| l.trim() == "DIR many/"), "{run}");
        assert!(lines.iter().any(|l| l.trim() == "DIR sub/"), "{run}");
        let top = lines
            .iter()
            .find(|l| l.ends_with(" top.txt"))
            .unwrap_or_else(|| panic!("{run}"));
        assert!(
            top.split_whitespace().nth(2) == Some("3"),
            "size column: {top}"
        );
        assert_eq!(lines.len(), 3, "{run}");

        let run = env.s3ma(&["ls", "--recursive", &env.dest()]).ok();
        assert_eq!(run.stdout.lines().count(), 1005, "{kind:?}");
        assert!(run.stdout.contains(" site/many/f1002.txt\n"), "full keys");

        let run = env
            .s3ma(&[
                "ls",
                "-r",
                "--json",
                &format!("s3://{}/site/many", env.bucket),
            ])
            .ok();
        let keys: Vec<String> = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .map(|v| v["key"].as_str().expect("key").to_string())
            .collect();
        assert_eq!(keys.len(), 1003, "{kind:?}");
        assert_eq!(keys[0], "site/many/f0000.txt");
    }
}

#[test]
fn ls_of_a_missing_bucket_is_one_clear_line() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let run = env.s3ma(&["ls", "s3://no-such-bucket-s3ma/x"]).code(3);
        assert!(run.stderr.contains("no-such-bucket-s3ma"), "{run}");
        assert!(run.stderr.contains("does not exist"), "{kind:?}: {run}");
        assert_eq!(run.stderr.lines().count(), 1, "{run}");
    }
}

#[test]
fn ls_of_one_object_shows_it() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("page.html", "12345");
        env.write("page.html.bak/inner", "x");
        env.sync(&["--include-hidden"]).ok();
        let run = env
            .s3ma(&["ls", &format!("s3://{}/site/page.html", env.bucket)])
            .ok();
        // The folder "page.html/" is empty, so the object itself is shown.
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{kind:?}: {run}");
        assert!(lines[0].ends_with("         5 page.html"), "{run}");
        // With a trailing slash it is a folder, and an empty one.
        let run = env
            .s3ma(&["ls", &format!("s3://{}/site/page.html/", env.bucket)])
            .ok();
        assert_eq!(run.stdout, "", "{run}");
    }
}

#[test]
fn an_object_beside_a_folder_of_the_same_name_is_shown() {
    // s3s-fs keeps objects as files, so a key and a folder of one name
    // cannot both exist there.
    let env = TestEnv::new(Kind::Moto);
    env.put("d1", b"an object named d1");
    env.put("d1/inside.txt", b"in the folder");
    env.put("d10.txt", b"another name with the same start");
    let url = format!("s3://{}/d1", env.bucket);
    let run = env.s3ma(&["ls", &url, "--json"]).ok();
    let keys: Vec<String> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["key"].as_str().map(str::to_string))
        .collect();
    assert_eq!(keys, ["d1/inside.txt", "d1"], "{run}");
    // With the slash, the folder alone.
    let run = env.s3ma(&["ls", &format!("{url}/"), "--json"]).ok();
    assert!(!run.stdout.contains(r#""key":"d1""#), "{run}");
}
