//! Crashes: `sync` killed with SIGKILL at seeded random moments, many
//! rounds; the next run converges, re-sends nothing the bucket already has,
//! and finds its state database intact.

use std::time::Duration;

use crate::harness::*;

#[test]
fn sigkill_during_sync_then_a_restart_converges_without_resending() {
    let seed = 0x5eed_c0ffee_u64;
    let mut rng = Rng(seed);
    let env = TestEnv::new(Kind::S3sFs);
    for i in 0..300u32 {
        let size = 1_000 + (i as usize * 7_919) % 60_000;
        env.write(
            &format!("d{}/f{i:03}.bin", i % 9),
            vec![(i % 251) as u8; size],
        );
    }
    // Two multipart files: killed mid-upload, they must never appear torn.
    let big: Vec<u8> = (0..12_000_000u32).map(|i| (i % 239) as u8).collect();
    env.write("big/one.bin", &big);
    env.write("big/two.bin", &big[..7_000_000]);
    let tree = env.tree().display().to_string();
    let dest = env.dest();
    let limits = [
        "--concurrency",
        "4",
        "--multipart-threshold",
        "5MiB",
        "--multipart-chunk-size",
        "5MiB",
    ];
    for round in 0..8 {
        let mut c = env.command();
        c.args(["sync", &tree, &dest, "--endpoint", &env.endpoint])
            .args(limits)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().expect("spawn sync");
        let after = 30 + rng.below(400);
        std::thread::sleep(Duration::from_millis(after));
        let _ = child.kill();
        let _ = child.wait();
        // Whatever is in the bucket is whole: an object is there with all
        // of its bytes, or not at all.
        for (key, bytes) in env.objects() {
            let rel = &key[env.prefix.len()..];
            let local = std::fs::read(env.tree().join(rel)).expect("local file");
            assert!(
                bytes == local,
                "round {round} (seed {seed:#x}, killed after {after} ms): {key} is torn"
            );
        }
    }
    let before: Vec<String> = env.listing().into_keys().collect();
    let run = env.sync(&limits).ok();
    assert!(
        !run.stderr.contains("could not be read"),
        "the state database opens cleanly: {run}"
    );
    let uploaded = run.actions("upload");
    for key in &uploaded {
        assert!(
            !before.contains(key),
            "{key} was already in the bucket and was sent again (seed {seed:#x}): {run}"
        );
    }
    assert_eq!(
        uploaded.len() + before.len(),
        env.expected().len(),
        "everything missing was sent: {run}"
    );
    env.converge(Duration::ZERO, &|| run.to_string());
    let run = env.s3ma(&["verify", &tree, &dest, "--download"]).ok();
    assert!(run.stdout.contains("0 missing, 0 extra, 0 differ"), "{run}");
}

#[test]
fn a_multipart_upload_cut_off_by_sigkill_is_aborted_by_the_next_run() {
    // moto lists multipart uploads; s3s-fs does not implement the listing.
    let env = TestEnv::new(Kind::Moto);
    let big: Vec<u8> = (0..40_000_000u32).map(|i| (i % 251) as u8).collect();
    env.write("big.bin", &big);
    let open_uploads = || {
        block_on(
            env.client
                .list_multipart_uploads()
                .bucket(&env.bucket)
                .send(),
        )
        .expect("list multipart uploads")
        .uploads()
        .len()
    };
    let tree = env.tree().display().to_string();
    let dest = env.dest();
    let limits = [
        "--concurrency",
        "1",
        "--multipart-threshold",
        "5MiB",
        "--multipart-chunk-size",
        "5MiB",
    ];
    let mut c = env.command();
    c.args(["sync", &tree, &dest, "--endpoint", &env.endpoint])
        .args(limits)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().expect("spawn sync");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Killed once the upload is open on the server and s3ma has recorded
    // it (it records it as soon as the server answers, before any part).
    let recorded = || {
        std::fs::read_dir(env.state_dir())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".uploads"))
            .any(|d| {
                std::fs::read_dir(d.path()).is_ok_and(|f| {
                    f.filter_map(Result::ok)
                        .any(|m| m.path().extension().is_none())
                })
            })
    };
    while open_uploads() == 0 || !recorded() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the sync ended before its multipart upload could be cut off"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no multipart upload started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(open_uploads(), 1, "the killed run left its upload open");
    let run = env.sync(&limits).ok();
    assert!(
        run.stdout
            .contains("aborted the unfinished multipart upload"),
        "{run}"
    );
    // Said once, as what it is: not a file of this run.
    assert_eq!(
        run.stdout.matches(r#""action":"abort""#).count(),
        1,
        "{run}"
    );
    assert!(!run.stdout.contains(r#""action":"note""#), "{run}");
    assert_eq!(open_uploads(), 0, "{run}");
    env.converge(Duration::ZERO, &|| run.to_string());
}

#[test]
fn sigkill_during_watch_bursts_at_seeded_moments_loses_nothing() {
    let seed = 0x0bad_5eed_u64;
    let mut rng = Rng(seed);
    let env = TestEnv::new(Kind::S3sFs);
    env.write("base.txt", "there from the start");
    for round in 0..5u32 {
        let mut w = env.watch(&["--delete"]);
        w.ready();
        // A burst of creates, edits and deletes, then a kill at a seeded
        // moment while it is being mirrored.
        for i in 0..150u32 {
            let n = rng.below(300);
            let rel = format!("r/{}/{n}.txt", n % 7);
            if rng.below(5) == 0 {
                let _ = std::fs::remove_file(env.tree().join(&rel));
            } else {
                env.write(&rel, format!("round {round}, write {i}"));
            }
        }
        let after = rng.below(600);
        std::thread::sleep(Duration::from_millis(after));
        w.kill();
        // Whatever is in the bucket is whole.
        for (key, bytes) in env.objects() {
            let rel = &key[env.prefix.len()..];
            if let Ok(local) = std::fs::read(env.tree().join(rel)) {
                assert!(
                    bytes == local || bytes.starts_with(b"round "),
                    "round {round} (seed {seed:#x}, killed after {after} ms): {key} is torn: \
                     {:?} in the bucket, {:?} here",
                    String::from_utf8_lossy(&bytes),
                    String::from_utf8_lossy(&local)
                );
            }
        }
    }
    let before_restart = env.objects();
    let mut w = env.watch(&["--delete"]);
    w.ready();
    env.converge(Duration::from_secs(60), &|| w.logs());
    assert!(
        !w.stderr().contains("could not be read"),
        "the state database opens cleanly:\n{}",
        w.logs()
    );
    for key in w.keys("upload") {
        let rel = &key[env.prefix.len()..];
        let local = std::fs::read(env.tree().join(rel)).expect("local");
        assert!(
            before_restart.get(&key) != Some(&local),
            "{key} was sent again although the bucket had it (seed {seed:#x}):\n{}",
            w.logs()
        );
    }
    assert_eq!(w.term(), 0, "{}", w.logs());
}
