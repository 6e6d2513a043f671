//! `--backup-prefix`: an object is copied aside on the server before it is
//! deleted or overwritten, in `sync` and `watch`.

use std::time::Duration;

use crate::harness::*;

#[test]
fn deleted_and_overwritten_objects_are_kept_in_the_backup_prefix() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("a.txt", "a, first");
        env.write("b.txt", "b, to be deleted");
        env.write("sub/c.txt", "c");
        let b = env.primary();
        let trash = format!("s3://{}/trash/", b.bucket);
        let keep = ["--delete", "--backup-prefix", trash.as_str()];
        env.sync(&keep).ok();
        // Nothing replaced yet: nothing kept.
        assert!(
            !b.listing().keys().any(|k| k.starts_with("trash/")),
            "{kind:?}"
        );
        env.write("a.txt", "a, second");
        std::fs::remove_file(env.tree().join("b.txt")).expect("rm");
        let run = env.sync(&keep).ok();
        assert_eq!(run.summary()["deleted"], 1, "{kind:?}: {run}");
        let objects = b.objects();
        assert_eq!(objects["trash/a.txt"], b"a, first", "{kind:?}");
        assert_eq!(objects["trash/b.txt"], b"b, to be deleted", "{kind:?}");
        assert_eq!(objects["site/a.txt"], b"a, second", "{kind:?}");
        assert!(!objects.contains_key("site/b.txt"), "{kind:?}");
        // The copy is the object as it was, metadata included.
        let (_, meta, _) = b.head("trash/a.txt");
        assert_eq!(
            meta.get("md5chksum"),
            Some(&md5_b64(b"a, first")),
            "{kind:?}"
        );
        // The backup lies beside the mirror: the mirror is exact.
        let mirrored: std::collections::BTreeMap<String, u64> = env
            .listing()
            .into_iter()
            .filter(|(k, _)| k.starts_with(&env.prefix))
            .collect();
        assert_eq!(mirrored, env.expected(), "{kind:?}");
        let tree = env.tree().display().to_string();
        env.s3ma(&["verify", &tree, &env.dest()]).ok();
        // With the time in each kept key, every version stays.
        env.write("a.txt", "a, third");
        let stamped = [&keep[..], &["--backup-timestamp"]].concat();
        env.sync(&stamped).ok();
        let versions: Vec<String> = b
            .listing()
            .into_keys()
            .filter(|k| k.starts_with("trash/a.txt."))
            .collect();
        assert_eq!(versions.len(), 1, "{kind:?}: {versions:?}");
        assert!(
            versions[0].ends_with('Z') && versions[0].len() == "trash/a.txt.20261201T145000Z".len()
        );
        assert_eq!(b.objects()[&versions[0]], b"a, second", "{kind:?}");
        // watch keeps what it deletes too.
        let mut w = env.watch(&keep);
        w.ready();
        std::fs::remove_file(env.tree().join("sub/c.txt")).expect("rm");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let done = || {
            let l = b.listing();
            l.contains_key("trash/sub/c.txt") && !l.contains_key("site/sub/c.txt")
        };
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{kind:?}: {}",
                w.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(w.term(), 0, "{kind:?}: {}", w.logs());
    }
}

#[test]
fn a_backup_prefix_inside_the_mirror_is_refused() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let inside = format!("s3://{}/{}trash/", env.primary().bucket, env.prefix);
    let run = env.sync(&["--backup-prefix", &inside]).code(2);
    assert!(run.all().contains("overlaps the mirror"), "{run}");
    let run = env.sync(&["--backup-timestamp"]).code(2);
    assert!(run.all().contains("needs --backup-prefix"), "{run}");
    assert!(env.listing().is_empty());
}
