//! `--metadata`: mode, owner and times stored with each object under
//! rclone's names; a chmod is mirrored by a metadata replace, not an
//! upload, in `sync` and `watch`.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::harness::*;

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn file_attributes_go_with_the_objects_and_a_chmod_is_a_metadata_replace() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let a = env.write("a.txt", "a");
        env.write("b.txt", "b");
        chmod(&a, 0o644);
        let first = env.sync(&["--metadata"]).ok();
        assert_eq!(first.summary()["uploaded"], 2, "{kind:?}: {first}");
        let b = env.primary();
        let key = format!("{}a.txt", env.prefix);
        let (_, meta, _) = b.head(&key);
        assert_eq!(
            meta.get("mode").map(String::as_str),
            Some("0100644"),
            "{kind:?}: {meta:?}"
        );
        let uid = std::fs::metadata(&a)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .expect("stat");
        assert_eq!(meta.get("uid"), Some(&uid.to_string()), "{kind:?}");
        assert!(
            meta.get("atime").is_some_and(|t| t.ends_with('Z')),
            "{kind:?}: {meta:?}"
        );
        assert!(
            meta.contains_key("md5chksum") && meta.contains_key("gid"),
            "{kind:?}"
        );
        // chmod: a copy onto itself with the new mode, nothing uploaded.
        chmod(&a, 0o600);
        let run = env.sync(&["--metadata"]).ok();
        assert_eq!(run.summary()["uploaded"], 0, "{kind:?}: {run}");
        assert_eq!(run.actions("headers"), vec![key.clone()], "{kind:?}: {run}");
        let (_, meta, _) = b.head(&key);
        assert_eq!(
            meta.get("mode").map(String::as_str),
            Some("0100600"),
            "{kind:?}"
        );
        assert!(meta.contains_key("md5chksum"), "{kind:?}");
        let again = env.sync(&["--metadata"]).ok();
        assert_eq!(again.summary()["copied"], 0, "{kind:?}: {again}");
        // watch mirrors a chmod the same way.
        let mut w = env.watch(&["--metadata"]);
        w.ready();
        chmod(&a, 0o640);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while b.head(&key).1.get("mode").map(String::as_str) != Some("0100640") {
            assert!(
                std::time::Instant::now() < deadline,
                "{kind:?}: {}",
                w.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(w.actions("upload").is_empty(), "{kind:?}: {}", w.logs());
        assert_eq!(w.term(), 0, "{kind:?}: {}", w.logs());
    }
}
