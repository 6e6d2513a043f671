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
