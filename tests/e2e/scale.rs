//! Large trees: the listing split into ranges listed at once, at keys the
//! state database knows, covers every key whatever the database says.

use crate::harness::*;

/// `-vv` lines of ListObjectsV2 requests that start after a key.
fn ranged_lists(run: &Run) -> usize {
    run.stderr
        .lines()
        .filter(|l| {
            l.contains("debug: GET") && l.contains("list-type") && l.contains("start-after")
        })
        .count()
}

#[test]
fn a_large_listing_is_split_into_ranges_that_miss_nothing() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        for d in 0..45 {
            for f in 0..100 {
                env.write(&format!("d{d:02}/f{f:03}.txt"), format!("{d} {f}"));
            }
        }
        env.sync(&[]).ok();
        // The database knows 4,500 keys: the next listing is split.
        let run = env.sync(&["-vv"]).ok();
        assert!(
            ranged_lists(&run) >= 1,
            "{kind:?}: not split:\n{}",
            run.stderr
        );
        assert_eq!(run.summary()["uploaded"], 0, "{kind:?}: {run}");
        assert_eq!(run.summary()["deleted"], 0, "{kind:?}: {run}");
        // Behind its back: objects before the first key, between ranges and
        // after the last, and a file gone here.
        let p = &env.prefix;
        for key in [
            "a-first.txt",
            "d22/f050-extra.txt",
            "d30/zz.txt",
            "zz-last.txt",
        ] {
            env.put(&format!("{p}{key}"), b"not from the tree");
        }
        std::fs::remove_file(env.tree().join("d10/f010.txt")).expect("rm");
        let run = env.sync(&["--delete", "-vv"]).ok();
        assert!(ranged_lists(&run) >= 1, "{kind:?}");
        let mut deleted = run.actions("delete");
        deleted.sort();
        let want: Vec<String> = [
            "a-first.txt",
            "d10/f010.txt",
            "d22/f050-extra.txt",
            "d30/zz.txt",
            "zz-last.txt",
        ]
        .iter()
        .map(|k| format!("{p}{k}"))
        .collect();
        assert_eq!(deleted, want, "{kind:?}: {run}");
        assert_eq!(env.listing(), env.expected(), "{kind:?}");
    }
}

/// ListObjectsV2 requests in a `-vv` run.
fn lists(run: &Run) -> usize {
    run.stderr
        .lines()
        .filter(|l| l.contains("debug: GET") && l.contains("list-type"))
        .count()
}

#[test]
fn trust_state_skips_the_listing_until_a_full_check_is_due() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("keep.txt", "kept");
        env.write("edit.txt", "before");
        env.write("gone.txt", "to be removed");
        env.sync(&[]).ok();
        let p = env.prefix.clone();
        // Written behind s3ma's back: a trusted run cannot know it.
        env.put(&format!("{p}stray.txt"), b"another tool's");
        env.write("edit.txt", "after, and longer");
        std::fs::remove_file(env.tree().join("gone.txt")).expect("rm");
        let run = env.sync(&["--trust-state", "--delete", "-vv"]).ok();
        assert_eq!(lists(&run), 0, "{kind:?}: listed:\n{}", run.stderr);
        assert!(run.stdout.contains(r#""source":"state""#), "{run}");
        assert_eq!(run.actions("upload"), [format!("{p}edit.txt")], "{run}");
        assert_eq!(run.actions("delete"), [format!("{p}gone.txt")], "{run}");
        assert!(env.keys().contains(&format!("{p}stray.txt")));
        // Once the full check is due, the bucket is listed again and the
        // stray object goes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let run = loop {
            let run = env
                .sync(&[
                    "--trust-state",
                    "--full-check-every",
                    "1s",
                    "--delete",
                    "-vv",
                ])
                .ok();
            if lists(&run) > 0 {
                break run;
            }
            assert!(std::time::Instant::now() < deadline, "never listed again");
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        assert_eq!(
            run.actions("delete"),
            [format!("{p}stray.txt")],
            "{kind:?}: {run}"
        );
        assert_eq!(env.listing(), env.expected(), "{kind:?}");
    }
}

/// The `--json` lines of a run as action and key (or path): what the walk
/// reported, in its order, then the uploads sorted (they are printed as
/// they finish; their order in the walk is checked by the merge, which
/// stops on a file out of key order).
fn stream(run: &Run) -> Vec<String> {
    let (mut uploads, mut told) = (Vec::new(), Vec::new());
    for v in run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["action"] != "summary")
    {
        let at = v.get("key").or_else(|| v.get("path"));
        let line = format!("{} {}", v["action"], at.unwrap_or(&serde_json::Value::Null));
        if v["action"] == "upload" {
            uploads.push(line);
        } else {
            told.push(line);
        }
    }
    uploads.sort();
    told.extend(uploads);
    told
}

#[test]
fn the_parallel_walk_gives_the_serial_walks_stream_and_a_clean_mirror() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        // Siblings that sort around '/', wider and deeper than what is
        // read ahead, with a link loop and a link to a directory.
        for top in ["a", "a-b", "a.b", "a0", "a b", "日本", "Z"] {
            env.write(&format!("{top}.txt"), top);
            for d in 0..30 {
                env.write(&format!("{top}/d{d}/f.txt"), "f");
                env.write(&format!("{top}/d{d}/d/g{}", d % 4), "g");
            }
        }
        let mut deep = String::from("deep");
        for i in 0..40 {
            deep.push_str(&format!("/{i}"));
            env.write(&format!("{deep}/f"), "deep");
        }
        env.write(".hidden/x", "hidden");
        let tree = env.tree();
        std::os::unix::fs::symlink(tree.join("a"), tree.join("a/d3/up")).expect("loop");
        std::os::unix::fs::symlink("a0", tree.join("a0-link")).expect("link");
        let dry = ["--dry-run", "-L", "--walk-threads"];
        let serial = env.sync(&[&dry[..], &["1"]].concat()).code(1);
        let parallel = env.sync(&[&dry[..], &["8"]].concat()).code(1);
        assert!(serial.all().contains("symlink loop"), "{kind:?}: {serial}");
        assert_eq!(stream(&serial), stream(&parallel), "{kind:?}");
        assert!(stream(&serial).len() > 400, "{kind:?}: {serial}");
        // Exit 1 for the loop; everything else is mirrored.
        env.sync(&["-L", "--delete"]).code(1);
        let again = env.sync(&["-L", "--delete"]).code(1);
        assert_eq!(again.summary()["uploaded"], 0, "{kind:?}: {again}");
        assert_eq!(again.summary()["deleted"], 0, "{kind:?}: {again}");
        let listing = env.listing();
        let p = &env.prefix;
        assert!(
            listing.contains_key(&format!("{p}a0-link/d7/f.txt")),
            "{kind:?}"
        );
        assert!(listing.contains_key(&format!("{p}{deep}/f")), "{kind:?}");
        assert!(!listing.keys().any(|k| k.contains(".hidden")), "{kind:?}");
        let files = listing.keys().filter(|k| !k.contains("a0-link/")).count();
        assert_eq!(files, env.expected().len(), "{kind:?}");
    }
}
