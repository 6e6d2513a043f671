//! `s3ma verify`: an exact mirror passes; every kind of difference is found,
//! named by key, and fails the run.

use crate::harness::*;

fn verify(env: &TestEnv, extra: &[&str]) -> Run {
    let tree = env.tree().display().to_string();
    let dest = env.dest();
    let mut args = vec!["verify", tree.as_str(), dest.as_str(), "--json"];
    args.extend_from_slice(extra);
    env.s3ma(&args)
}

/// The `verify` summary line.
fn found(run: &Run) -> serde_json::Value {
    run.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["action"] == "verify")
        .unwrap_or_else(|| panic!("no verify line in:\n{run}"))
}

#[test]
fn an_exact_mirror_passes_and_every_difference_is_named() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("a.txt", "alpha");
        env.write("dir/b.txt", "bravo");
        env.write("dir/c.txt", "charlie");
        env.write("same-size.txt", "1234");
        env.write(".hidden", "not mirrored, not missing");
        let big: Vec<u8> = (0..6_000_000u32).map(|i| (i % 241) as u8).collect();
        env.write("big.bin", &big);
        env.sync(&[
            "--multipart-threshold",
            "5MiB",
            "--multipart-chunk-size",
            "5MiB",
        ])
        .ok();
        let run = verify(&env, &[]).ok();
        let f = found(&run);
        assert_eq!(f["matched"], 5, "{run}");
        assert_eq!(f["clean"], true, "{run}");
        let run = verify(&env, &["--download"]).ok();
        assert_eq!(found(&run)["matched"], 5, "{run}");

        // One of each: a file with no object, an object with no file, a
        // size that differs, same-size bytes that differ.
        env.write("new.txt", "not uploaded yet");
        let p = &env.prefix;
        env.put(&format!("{p}stray.txt"), b"no local file");
        env.put(&format!("{p}dir/b.txt"), b"bravo, but longer");
        env.put(&format!("{p}same-size.txt"), b"abcd");
        let run = verify(&env, &[]).code(1);
        let f = found(&run);
        assert_eq!(
            (&f["matched"], &f["missing"], &f["extra"], &f["differ"]),
            (&3.into(), &1.into(), &1.into(), &2.into()),
            "{run}"
        );
        assert_eq!(run.actions("missing"), [format!("{p}new.txt")], "{run}");
        assert_eq!(run.actions("extra"), [format!("{p}stray.txt")], "{run}");
        assert_eq!(
            run.actions("differ"),
            [format!("{p}dir/b.txt"), format!("{p}same-size.txt")],
            "{run}"
        );
        // A sync repairs it: --delete for the stray object, --checksum for
        // the same-size replacement (s3s-fs lists no ETag that would tell).
        let run = env.sync(&["--delete", "--checksum"]).ok();
        assert!(
            run.actions("upload").contains(&format!("{p}same-size.txt")),
            "{run}"
        );
        let run = verify(&env, &["--download"]).ok();
        assert_eq!(found(&run)["matched"], 6, "{run}");
    }
}

#[test]
fn download_catches_bytes_that_contradict_their_metadata() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("doc.txt", "the real text");
    env.sync(&[]).ok();
    // Same size, different bytes, and metadata that vouches for the old
    // ones (as a broken copy tool might leave it).
    let key = format!("{}doc.txt", env.prefix);
    block_on(
        env.client
            .put_object()
            .bucket(&env.bucket)
            .key(&key)
            .metadata("md5chksum", md5_b64(b"the real text"))
            .body(b"the fake text".to_vec().into())
            .send(),
    )
    .expect("put");
    let run = verify(&env, &["--download"]).code(1);
    assert_eq!(run.actions("differ"), [key], "{run}");
}

#[test]
fn a_missing_bucket_is_fatal_and_a_missing_directory_is_an_error() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let tree = env.tree().display().to_string();
    let run = env
        .s3ma(&["verify", &tree, "s3://no-such-bucket-here/x"])
        .code(3);
    assert!(run.stderr.contains("no-such-bucket-here"), "{run}");
    let gone = env.tree().join("nope").display().to_string();
    let run = env.s3ma(&["verify", &gone, &env.dest()]);
    assert_ne!(run.code, 0, "{run}");
    assert!(run.stderr.contains("nope"), "{run}");
}

/// Puts `data` at `key` with `md5chksum` and `mtime` metadata, as
/// `aws s3 cp --metadata md5chksum=…,mtime=…` does.
fn put_with_metadata(env: &TestEnv, key: &str, data: &[u8], md5chksum: &str, mtime: &str) {
    block_on(
        env.client
            .put_object()
            .bucket(&env.bucket)
            .key(key)
            .metadata("md5chksum", md5chksum)
            .metadata("mtime", mtime)
            .body(data.to_vec().into())
            .send(),
    )
    .expect("put");
}

#[test]
fn other_bytes_under_copied_metadata_are_a_difference_for_verify_and_sync() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("page.html", "<p>the real page</p>");
        env.sync(&[]).ok();
        let key = format!("{}page.html", env.prefix);
        let (_, meta, _) = env.head(&key);
        // Same size, other bytes, the original's metadata copied on.
        put_with_metadata(
            &env,
            &key,
            b"<p>a forged page!</p>",
            &meta["md5chksum"],
            &meta["mtime"],
        );
        let run = verify(&env, &[]).code(1);
        assert_eq!(
            run.actions("differ"),
            std::slice::from_ref(&key),
            "{kind:?}: {run}"
        );
        assert_eq!(found(&run)["clean"], false, "{run}");
        assert_eq!(found(&run)["unverified"], 0, "{run}");
        let run = env.sync(&["--checksum"]).ok();
        assert_eq!(
            run.actions("upload"),
            std::slice::from_ref(&key),
            "{kind:?}: {run}"
        );
        let run = verify(&env, &[]).ok();
        assert_eq!(found(&run)["matched"], 1, "{run}");
    }
}

#[test]
fn right_bytes_under_wrong_metadata_are_repaired_not_resent() {
    let env = TestEnv::new(Kind::Moto);
    // Above the size at which the listing's ETag is trusted without a HEAD.
    let data: Vec<u8> = (0..9_000_000u32).map(|i| (i % 251) as u8).collect();
    env.write("big.bin", &data);
    let key = format!("{}big.bin", env.prefix);
    put_with_metadata(
        &env,
        &key,
        &data,
        &md5_b64(b"something else"),
        "1.000000000",
    );
    let run = verify(&env, &[]).ok();
    assert_eq!(found(&run)["matched"], 1, "{run}");
    let run = env.sync(&["--checksum", "-v"]).ok();
    assert!(run.actions("upload").is_empty(), "sent again: {run}");
    assert!(run.stdout.contains("put right on the server"), "{run}");
    let (_, meta, _) = env.head(&key);
    assert_eq!(meta["md5chksum"], md5_b64(&data), "{run}");
}
