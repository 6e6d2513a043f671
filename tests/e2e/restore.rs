//! `s3ma restore`: a mirror brought back byte for byte and mtime for mtime
//! (and mode, when stored), incrementally; `--at` brings back the tree of
//! an earlier time from the bucket's versions; keys that could lead out of
//! the directory never write there; an interrupted restore run again
//! finishes without downloading what is done.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::harness::*;

/// Every regular file under `root`: its bytes, mtime (ns) and mode,
/// hidden files and the restore's temporary files included.
fn snapshot(root: &Path) -> BTreeMap<String, (Vec<u8>, i64, u32)> {
    // A restore running meanwhile renames its temporary files away: what
    // vanishes between the walk and the read is left out.
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            let rel = e
                .path()
                .strip_prefix(root)
                .expect("under")
                .display()
                .to_string();
            let data = std::fs::read(e.path()).ok()?;
            Some((
                rel,
                (
                    data,
                    m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                    m.mode() & 0o7777,
                ),
            ))
        })
        .collect()
}

fn restore(env: &TestEnv, dir: &Path, extra: &[&str]) -> Run {
    let dir = dir.display().to_string();
    let dest = env.dest();
    let mut args = vec!["restore", dest.as_str(), dir.as_str(), "--json"];
    args.extend_from_slice(extra);
    env.s3ma(&args)
}

const RANGES: [&str; 4] = [
    "--multipart-threshold",
    "5M",
    "--multipart-chunk-size",
    "5M",
];

fn write_tree(env: &TestEnv) {
    env.write("index.html", "<h1>home</h1>");
    env.write("a/b/c/deep.txt", "deep");
    env.write("empty.txt", "");
    env.write("names/sp ace & ü+.txt", "odd name");
    let big: Vec<u8> = (0..12_345_678u32)
        .map(|i| (i % 241) as u8 ^ (i >> 13) as u8)
        .collect();
    env.write("big/one.bin", &big);
    let secret = env.write("secret.txt", "only mine");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    set_mtime(&env.tree().join("a/b/c/deep.txt"), 1_500_000_000);
}

#[test]
fn a_restore_equals_the_tree_and_a_rerun_downloads_nothing() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        write_tree(&env);
        let mut up = vec!["--metadata"];
        up.extend(RANGES);
        env.sync(&up).ok();
        let want = snapshot(&env.tree());
        let dir = env.work().join("restored");
        let first = restore(&env, &dir, &RANGES).ok();
        assert_eq!(first.summary()["downloaded"], 6, "{kind:?}: {first}");
        assert_eq!(snapshot(&dir), want, "{kind:?}: {first}");
        // verify agrees, and a second run has nothing to do.
        let shown = dir.display().to_string();
        env.s3ma(&["verify", &shown, &env.dest()]).ok();
        let again = restore(&env, &dir, &RANGES).ok();
        assert_eq!(again.summary()["downloaded"], 0, "{kind:?}: {again}");
        assert_eq!(again.summary()["skipped"], 6, "{kind:?}: {again}");
        // A file changed here (same size, same mtime) is found by
        // --checksum only; one with another mtime by either.
        let deep = dir.join("a/b/c/deep.txt");
        std::fs::write(&deep, "DEEP").expect("write");
        set_mtime(&deep, 1_500_000_000);
        let plain = restore(&env, &dir, &[]).ok();
        assert_eq!(plain.summary()["downloaded"], 0, "{kind:?}: {plain}");
        let checked = restore(&env, &dir, &["--checksum"]).ok();
        assert_eq!(checked.summary()["downloaded"], 1, "{kind:?}: {checked}");
        // Same bytes, another mtime: --checksum keeps the file and puts
        // the object's mtime back, so a plain run agrees after it.
        set_mtime(&dir.join("empty.txt"), 1_000_000_000);
        let kept = restore(&env, &dir, &["--checksum"]).ok();
        assert_eq!(kept.summary()["downloaded"], 0, "{kind:?}: {kept}");
        assert_eq!(snapshot(&dir), want, "{kind:?}: {kept}");
        std::fs::write(dir.join("index.html"), "<h1>HOME</h1>").expect("write");
        let changed = restore(&env, &dir, &[]).ok();
        assert_eq!(changed.summary()["downloaded"], 1, "{kind:?}: {changed}");
        assert_eq!(snapshot(&dir), want, "{kind:?}");
        // --delete removes what has no object, and leaves hidden files
        // (never mirrored) alone; --dry-run changes nothing.
        std::fs::write(dir.join("a/extra.txt"), "extra").expect("write");
        std::fs::write(dir.join(".hidden"), "kept").expect("write");
        // One a killed restore left, for a key that is gone: --delete
        // takes it away.
        std::fs::write(dir.join("a/.s3ma-restore-0123456789abcdef"), "stale").expect("write");
        let dry = restore(&env, &dir, &["--delete", "--dry-run"]).ok();
        assert_eq!(dry.summary()["deleted"], 1, "{kind:?}: {dry}");
        assert!(dir.join("a/extra.txt").exists());
        let capped = restore(&env, &dir, &["--delete", "--max-delete", "0"]).code(3);
        assert!(
            capped.all().contains("more than --max-delete 0"),
            "{capped}"
        );
        assert!(dir.join("a/extra.txt").exists());
        let del = restore(&env, &dir, &["--delete"]).ok();
        assert_eq!(del.summary()["deleted"], 1, "{kind:?}: {del}");
        assert!(!dir.join("a/extra.txt").exists() && dir.join(".hidden").exists());
        assert!(!dir.join("a/.s3ma-restore-0123456789abcdef").exists());
    }
}

/// Waits until the clock has passed `t` by more than a second (the
/// servers' times are kept to the millisecond or the second).
fn after(t: SystemTime) {
    while SystemTime::now() < t + Duration::from_millis(1100) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rfc3339(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    aws_smithy_types::DateTime::from_secs_and_nanos(d.as_secs() as i64, d.subsec_nanos())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .expect("format")
}

#[test]
fn restore_at_brings_back_the_tree_of_that_time_from_the_versions() {
    let env = TestEnv::new(Kind::Moto);
    block_on(
        env.client
            .put_bucket_versioning()
            .bucket(&env.bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send(),
    )
    .expect("enable versioning");
    write_tree(&env);
    env.write("gone.txt", "deleted later");
    env.write("old/name.txt", "renamed later");
    env.sync(&["--metadata"]).ok();
    let first = snapshot(&env.tree());
    let t1 = SystemTime::now();
    after(t1);
    // Change, delete and rename; a new file.
    env.write("index.html", "<h1>home, second edition</h1>");
    std::fs::remove_file(env.tree().join("gone.txt")).expect("rm");
    std::fs::create_dir_all(env.tree().join("new")).expect("mkdir");
    std::fs::rename(
        env.tree().join("old/name.txt"),
        env.tree().join("new/name.txt"),
    )
    .expect("mv");
    env.write("later.txt", "added later");
    env.sync(&["--metadata", "--delete"]).ok();
    let dir = env.work().join("tuesday");
    let at = rfc3339(t1);
    let run = restore(&env, &dir, &["--at", &at]).ok();
    assert_eq!(snapshot(&dir), first, "{run}");
    // The present is restored without --at, into the same directory,
    // with --delete taking away what was not there then.
    let now = restore(&env, &dir, &["--delete"]).ok();
    assert_eq!(now.summary()["deleted"], 2, "{now}");
    assert_eq!(snapshot(&dir), snapshot(&env.tree()), "{now}");
    // ls --at shows the first tree; ls --versions the history.
    let listed = env.s3ma(&["ls", &env.dest(), "--at", &at, "--json"]).ok();
    let keys: Vec<String> = listed
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["key"].as_str().unwrap_or_default().to_string())
        .collect();
    let want: Vec<String> = first.keys().map(|k| format!("{}{k}", env.prefix)).collect();
    assert_eq!(keys, want, "{listed}");
    let versions = env.s3ma(&["ls", &env.dest(), "--versions"]).ok();
    let gone: Vec<&str> = versions
        .stdout
        .lines()
        .filter(|l| l.contains("site/gone.txt"))
        .collect();
    assert_eq!(gone.len(), 2, "{versions}");
    assert!(gone[0].ends_with("(deleted, latest)"), "{versions}");
}

#[test]
fn restore_at_on_a_bucket_without_versioning_says_so() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("a.txt", "a");
        env.sync(&[]).ok();
        let dir = env.work().join("r");
        let run = restore(&env, &dir, &["--at", "1h"]);
        assert_ne!(run.code, 0, "{kind:?}: {run}");
        // moto: no versioning; s3s-fs: none implemented.
        assert!(
            run.all().contains("has no versioning")
                || run.all().contains("does not implement versioning"),
            "{kind:?}: {run}"
        );
        assert!(!dir.join("a.txt").exists(), "{kind:?}");
        let bad = restore(&env, &dir, &["--at", "yesterday"]).code(2);
        assert!(bad.all().contains("RFC 3339"), "{bad}");
    }
}

#[test]
fn keys_that_lead_out_of_the_directory_never_write_there() {
    let env = TestEnv::new(Kind::Moto);
    env.write("fine.txt", "fine");
    env.sync(&[]).ok();
    for key in [
        "site/../evil.txt",
        "site/a/../../evil2.txt",
        "site/x//y.txt",
    ] {
        env.put(key, b"evil");
    }
    env.put("site/link/through.txt", b"through the link");
    let base = env.work().join("base");
    let dir = base.join("dir");
    let outside = env.work().join("outside");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::os::unix::fs::symlink(&outside, dir.join("link")).expect("symlink");
    let run = restore(&env, &dir, &[]).code(1);
    for key in [
        "site/../evil.txt",
        "site/a/../../evil2.txt",
        "site/x//y.txt",
    ] {
        assert!(run.stdout.contains(key), "{key}: {run}");
    }
    assert!(run.all().contains("is a symbolic link"), "{run}");
    assert_eq!(std::fs::read(dir.join("fine.txt")).expect("fine"), b"fine");
    assert!(
        std::fs::read_dir(&outside)
            .expect("outside")
            .next()
            .is_none(),
        "{run}"
    );
    let all: Vec<String> = snapshot(&env.work()).into_keys().collect();
    assert!(
        all.iter().all(|p| !p.contains("evil")),
        "written outside: {all:?}\n{run}"
    );
}

#[test]
fn an_interrupted_restore_finishes_without_downloading_again() {
    let env = TestEnv::new(Kind::S3sFs);
    for i in 0..600u32 {
        env.write(
            &format!("d{}/f{i:04}.txt", i % 7),
            format!("file {i} ").repeat(50),
        );
    }
    env.sync(&[]).ok();
    let dir = env.work().join("r");
    let mut c = env.command();
    c.args([
        "restore",
        &env.dest(),
        &dir.display().to_string(),
        "--endpoint",
        &env.endpoint,
        "-j",
        "1",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut child = c.spawn().expect("spawn restore");
    let placed = |dir: &Path| {
        snapshot(dir)
            .keys()
            .filter(|k| !k.contains(".s3ma-restore-"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while placed(&dir) < 30 {
        assert!(Instant::now() < deadline, "the restore placed no files");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the restore ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // One restore into a directory at a time.
    let second = restore(&env, &dir, &[]).code(4);
    assert!(
        second.all().contains("another s3ma restore into"),
        "{second}"
    );
    child.kill().expect("kill");
    child.wait().expect("wait");
    let before = placed(&dir);
    assert!(before < 600, "all placed before the kill");
    let run = restore(&env, &dir, &[]).ok();
    let downloaded = run.summary()["downloaded"].as_u64().expect("count");
    let skipped = run.summary()["skipped"].as_u64().expect("count");
    assert_eq!(downloaded + skipped, 600, "{run}");
    assert!(skipped >= before as u64, "{before} were in place: {run}");
    let mut want = snapshot(&env.tree());
    let got = snapshot(&dir);
    // No temporary file is left once the run is done.
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, v) in want.iter_mut() {
        assert_eq!(&got[k].0, &v.0, "{k}");
    }
}

#[test]
fn archived_objects_are_named_once_with_what_to_do() {
    let env = TestEnv::new(Kind::Moto);
    env.write("a.txt", "a");
    env.sync(&[]).ok();
    block_on(
        env.client
            .put_object()
            .bucket(&env.bucket)
            .key("site/cold.bin")
            .storage_class(aws_sdk_s3::types::StorageClass::Glacier)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"cold"))
            .send(),
    )
    .expect("put archived");
    let dir = env.work().join("r");
    let run = restore(&env, &dir, &[]).code(1);
    assert!(
        run.all()
            .contains("1 object is in an archive storage class")
            && run.all().contains("site/cold.bin")
            && run.all().contains("restore-object"),
        "{run}"
    );
    assert_eq!(run.summary()["failed"], 1, "{run}");
    assert_eq!(std::fs::read(dir.join("a.txt")).expect("a"), b"a");
    assert!(!dir.join("cold.bin").exists());
}

#[test]
fn an_empty_prefix_with_delete_is_refused_and_deletes_nothing() {
    let env = TestEnv::new(Kind::S3sFs);
    let dir = env.work().join("r");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("precious.txt"), "keep me").expect("write");
    let run = restore(&env, &dir, &["--delete"]).code(3);
    assert!(run.all().contains("holds no objects"), "{run}");
    assert!(dir.join("precious.txt").exists());
}

#[test]
fn delete_needs_a_file_to_restore_and_a_refused_key_blocks_nothing_else() {
    let env = TestEnv::new(Kind::Moto);
    // Only a folder marker, and a key that is refused.
    env.put("site/folder/", b"");
    env.put("site/../x", b"x");
    let dir = env.work().join("r");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("important.txt"), "keep").expect("write");
    std::fs::write(dir.join("sub/data"), "keep").expect("write");
    let run = restore(&env, &dir, &["--delete"]).code(3);
    assert!(run.all().contains("is a file to restore"), "{run}");
    assert!(dir.join("important.txt").exists() && dir.join("sub/data").exists());
    // With a file to restore, the refused key is an error (exit 1) and the
    // files without an object go.
    env.put("site/a.txt", b"a");
    let run = restore(&env, &dir, &["--delete"]).code(1);
    assert_eq!(run.summary()["deleted"], 2, "{run}");
    assert!(!dir.join("important.txt").exists() && !dir.join("sub").exists());
    assert_eq!(std::fs::read(dir.join("a.txt")).expect("a"), b"a");
    // A dry run into a directory still to be made deletes nothing.
    let fresh = env.work().join("fresh");
    let dry = restore(&env, &fresh, &["--delete", "--dry-run"]).code(1);
    assert_eq!(dry.summary()["deleted"], 0, "{dry}");
    assert!(!fresh.exists());
}

#[test]
fn a_link_at_the_temporary_name_is_not_followed_and_modes_follow_the_umask() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("target.txt", "from the bucket");
    env.sync(&[]).ok();
    let dir = env.work().join("r");
    let outside = env.work().join("victim");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(&outside, "not yours").expect("write");
    let temp = format!(".s3ma-restore-{}", &md5_hex(b"target.txt")[..16]);
    std::os::unix::fs::symlink(&outside, dir.join(&temp)).expect("symlink");
    restore(&env, &dir, &[]).ok();
    assert_eq!(std::fs::read(&outside).expect("victim"), b"not yours");
    let target = dir.join("target.txt");
    let meta = std::fs::symlink_metadata(&target).expect("target");
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert_eq!(std::fs::read(&target).expect("target"), b"from the bucket");
    assert!(!dir.join(&temp).exists());
    // Without stored modes, the restored file gets what the user's umask
    // gives, as the original did.
    let source = std::fs::metadata(env.tree().join("target.txt")).expect("source");
    assert_eq!(meta.mode() & 0o777, source.mode() & 0o777);
    let d = std::fs::metadata(&dir).expect("dir");
    let sub = env.work().join("r2");
    env.write("sub/file.txt", "in a directory");
    env.sync(&[]).ok();
    restore(&env, &sub, &[]).ok();
    let made = std::fs::metadata(sub.join("sub")).expect("made dir");
    assert_eq!(made.mode() & 0o777, d.mode() & 0o777);
}

#[test]
fn checksum_compares_the_bytes_of_an_object_with_no_md5() {
    let env = TestEnv::new(Kind::Moto);
    // A multipart object another tool wrote: no md5chksum, an ETag that
    // is no MD5.
    let data: Vec<u8> = (0..(6u32 << 20)).map(|i| (i % 251) as u8).collect();
    block_on(async {
        let c = &env.client;
        let key = format!("{}multi.bin", env.prefix);
        let up = c
            .create_multipart_upload()
            .bucket(&env.bucket)
            .key(&key)
            .send()
            .await
            .expect("create");
        let id = up.upload_id().expect("id").to_string();
        let mut parts = Vec::new();
        for (i, chunk) in data.chunks(5 << 20).enumerate() {
            let n = i as i32 + 1;
            let p = c
                .upload_part()
                .bucket(&env.bucket)
                .key(&key)
                .upload_id(&id)
                .part_number(n)
                .body(aws_sdk_s3::primitives::ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .expect("part");
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(p.e_tag().map(str::to_string))
                    .build(),
            );
        }
        c.complete_multipart_upload()
            .bucket(&env.bucket)
            .key(&key)
            .upload_id(&id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .expect("complete");
    });
    let dir = env.work().join("r");
    let first = restore(&env, &dir, &[]).ok();
    assert!(first.all().contains("only its size was checked"), "{first}");
    let file = dir.join("multi.bin");
    let mtime = std::fs::metadata(&file).expect("stat").mtime();
    // The same size and mtime, other bytes: only --checksum finds it, by
    // downloading the object to compare.
    let mut bad = data.clone();
    bad[1000] ^= 0xff;
    std::fs::write(&file, &bad).expect("write");
    set_mtime(&file, mtime as u64);
    let plain = restore(&env, &dir, &[]).ok();
    assert_eq!(plain.summary()["downloaded"], 0, "{plain}");
    let checked = restore(&env, &dir, &["--checksum"]).ok();
    assert_eq!(checked.summary()["downloaded"], 1, "{checked}");
    assert_eq!(std::fs::read(&file).expect("read"), data);
    let again = restore(&env, &dir, &["--checksum"]).ok();
    assert_eq!(again.summary()["downloaded"], 0, "{again}");
    assert_eq!(again.summary()["skipped"], 1, "{again}");
}
