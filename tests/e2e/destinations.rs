//! Further destinations (`bucketSync`, `destinations`): a second bucket on
//! the same server gets server-side copies, one on another server gets
//! uploads; each has its own state, and one that is down does not hold up
//! the others.

use std::time::Duration;

use crate::harness::*;

const WITHIN: Duration = Duration::from_secs(30);

/// Writes `conf.json` in the work directory with the primary on `env` and
/// these `destinations` entries (JSON objects).
fn config_with(env: &TestEnv, destinations: &[String]) -> String {
    let path = env.work().join("conf.json");
    write_file(
        &path,
        &format!(
            r#"{{"bucket": "{}", "topPrefix": "{}", "endpoint": "{}", "destinations": [{}]}}"#,
            env.bucket,
            env.prefix,
            env.endpoint,
            destinations.join(", ")
        ),
    );
    path.display().to_string()
}

fn entry(name: &str, b: &Bucket) -> String {
    format!(
        r#"{{"name": "{name}", "endpoint": "{}", "bucket": "{}", "prefix": "{}"}}"#,
        b.endpoint, b.bucket, b.prefix
    )
}

/// JSON lines of `stdout` with this action and destination (`None`: the
/// primary), as their keys.
fn keys_of(stdout: &str, action: &str, dest: Option<&str>) -> Vec<String> {
    let mut keys: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["action"] == action && v["dest"].as_str() == dest)
        .map(|v| v["key"].as_str().unwrap_or_default().to_string())
        .collect();
    keys.sort();
    keys
}

fn sync_with(env: &TestEnv, config: &str, extra: &[&str]) -> Run {
    let tree = env.tree().display().to_string();
    let mut c = env.command();
    c.args(["sync", &tree, "--json", "--config", config])
        .args(extra);
    TestEnv::run_cmd(c)
}

#[test]
fn sync_copies_on_the_server_and_uploads_to_another() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        let near = env.second(kind, &env.endpoint, "near/");
        // The other kind of server: s3s-fs to moto, moto to s3s-fs.
        let far_kind = if kind == Kind::Moto {
            Kind::S3sFs
        } else {
            Kind::Moto
        };
        let far = env.second(far_kind, &endpoint(far_kind), "far/");
        let config = config_with(&env, &[entry("near", &near), entry("far", &far)]);
        env.write("a.txt", "alpha");
        env.write("dir/b.txt", "beta beta");
        env.write("dir/keep.txt", "unchanged");
        // Above the multipart threshold: copied part by part.
        let big: Vec<u8> = (0..6_000_000u32).map(|i| (i % 253) as u8).collect();
        env.write("big.bin", &big);
        let limits = [
            "--multipart-threshold",
            "5MiB",
            "--multipart-chunk-size",
            "5MiB",
        ];
        let run = sync_with(&env, &config, &limits).ok();
        for b in [&env.primary(), &near, &far] {
            env.converge_on(b, Duration::ZERO, &|| run.to_string());
        }
        let all = ["a.txt", "big.bin", "dir/b.txt", "dir/keep.txt"];
        let under = |p: &str| all.iter().map(|r| format!("{p}{r}")).collect::<Vec<_>>();
        assert_eq!(
            keys_of(&run.stdout, "upload", None),
            under(&env.prefix),
            "{run}"
        );
        assert_eq!(
            keys_of(&run.stdout, "copy", Some("near")),
            under("near/"),
            "{run}"
        );
        assert!(
            keys_of(&run.stdout, "upload", Some("near")).is_empty(),
            "{run}"
        );
        assert_eq!(
            keys_of(&run.stdout, "upload", Some("far")),
            under("far/"),
            "{run}"
        );
        let (_, meta, _) = near.head("near/big.bin");
        assert_eq!(
            meta.get("md5chksum").map(String::as_str),
            Some(md5_b64(&big).as_str()),
            "the copy keeps the metadata"
        );

        // Nothing changed: nothing sent anywhere.
        let run = sync_with(&env, &config, &[]).ok();
        for action in ["upload", "copy", "delete"] {
            for dest in [None, Some("near"), Some("far")] {
                assert!(keys_of(&run.stdout, action, dest).is_empty(), "{run}");
            }
        }

        // An edit, a rename and a delete reach every destination.
        env.write("a.txt", "alpha, edited");
        std::fs::rename(env.tree().join("dir/b.txt"), env.tree().join("dir/c.txt"))
            .expect("rename");
        std::fs::remove_file(env.tree().join("big.bin")).expect("rm");
        let run = sync_with(&env, &config, &["--delete"]).ok();
        for b in [&env.primary(), &near, &far] {
            env.converge_on(b, Duration::ZERO, &|| run.to_string());
        }
        assert_eq!(
            keys_of(&run.stdout, "delete", Some("far")),
            ["far/big.bin", "far/dir/b.txt"],
            "{run}"
        );
    }
}

#[test]
fn a_destination_that_is_down_catches_up_and_holds_up_no_one() {
    let mut other = OwnServer::start();
    let env = TestEnv::new(Kind::S3sFs);
    let near = env.second(Kind::S3sFs, &env.endpoint, "near/");
    let far = env.second(Kind::S3sFs, &other.endpoint(), "far/");
    let config = config_with(&env, &[entry("far", &far), entry("near", &near)]);
    env.write("a.txt", "first");
    sync_with(&env, &config, &[]).ok();
    other.down();
    env.write("b.txt", "written while far is down");
    env.write("a.txt", "first, changed while far is down");
    let quick = [
        "--connect-timeout",
        "1",
        "--read-timeout",
        "2",
        "--retries",
        "1",
    ];
    let run = sync_with(&env, &config, &quick).code(3);
    assert!(
        run.stderr.contains("[far] error:") && run.stderr.contains(&other.endpoint()),
        "the failure names the destination and its endpoint: {run}"
    );
    env.converge_on(&env.primary(), Duration::ZERO, &|| run.to_string());
    env.converge_on(&near, Duration::ZERO, &|| run.to_string());
    other.up();
    let run = sync_with(&env, &config, &[]).ok();
    env.converge_on(&far, Duration::ZERO, &|| run.to_string());
    assert_eq!(
        keys_of(&run.stdout, "upload", Some("far")),
        ["far/a.txt", "far/b.txt"],
        "only what it missed: {run}"
    );
    assert!(keys_of(&run.stdout, "upload", None).is_empty(), "{run}");
    assert!(
        keys_of(&run.stdout, "copy", Some("near")).is_empty(),
        "{run}"
    );
}

#[test]
fn watch_mirrors_to_every_destination_and_one_outage_stalls_only_it() {
    let mut other = OwnServer::start();
    let env = TestEnv::new(Kind::S3sFs);
    let near = env.second(Kind::S3sFs, &env.endpoint, "near/");
    let far = env.second(Kind::S3sFs, &other.endpoint(), "far/");
    let config = config_with(&env, &[entry("near", &near), entry("far", &far)]);
    env.write("old.txt", "there before the start");
    env.write("docs/readme.txt", "to be renamed");
    env.write("gone.txt", "to be deleted");
    let tree = env.tree().display().to_string();
    let mut w = env.watch_args(&[
        &tree,
        "--delete",
        "--config",
        &config,
        "--connect-timeout",
        "1",
        "--read-timeout",
        "2",
        "--retries",
        "1",
    ]);
    let everyone = [env.primary(), near, far];
    for b in &everyone {
        env.converge_on(b, WITHIN, &|| w.logs());
    }
    env.write("new.txt", "created while watching");
    env.write("old.txt", "edited while watching, longer");
    std::fs::rename(env.tree().join("docs"), env.tree().join("papers")).expect("mv");
    std::fs::remove_file(env.tree().join("gone.txt")).expect("rm");
    for b in &everyone {
        env.converge_on(b, WITHIN, &|| w.logs());
    }

    other.down();
    env.write("during.txt", "written while far is down");
    std::fs::remove_file(env.tree().join("new.txt")).expect("rm");
    for b in &everyone[..2] {
        env.converge_on(b, WITHIN, &|| w.logs());
    }
    // The far daemon saw the outage (its own error line), and waits.
    let deadline = std::time::Instant::now() + WITHIN;
    while !w.actions("error").iter().any(|v| {
        v["dest"] == "far"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("retrying in"))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "no outage reported for far:\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !w.actions("error").iter().any(|v| v["dest"] != "far"),
        "only far had trouble:\n{}",
        w.logs()
    );
    other.up();
    env.converge_on(&everyone[2], Duration::from_secs(90), &|| w.logs());
    // The destination on the primary's server copied everything, at the
    // start and later (waiting for the primary's upload where needed).
    let near_lines = |action: &str| -> Vec<String> {
        let mut k: Vec<String> = w
            .actions(action)
            .iter()
            .filter(|v| v["dest"] == "near")
            .map(|v| v["key"].as_str().unwrap_or_default().to_string())
            .collect();
        k.sort();
        k
    };
    assert!(near_lines("upload").is_empty(), "{}", w.logs());
    let copied = near_lines("copy");
    for key in [
        "near/old.txt",
        "near/new.txt",
        "near/papers/readme.txt",
        "near/during.txt",
    ] {
        assert!(
            copied.iter().any(|k| k == key),
            "{key} copied:\n{}",
            w.logs()
        );
    }
    assert_eq!(w.term(), 0, "{}", w.logs());
}

#[test]
fn ls_lists_a_configured_destination_through_its_own_endpoint() {
    let other = OwnServer::start();
    let env = TestEnv::new(Kind::S3sFs);
    let far = env.second(Kind::S3sFs, &other.endpoint(), "far/");
    let config = config_with(&env, &[entry("far", &far)]);
    env.write("x/y.txt", "why");
    sync_with(&env, &config, &[]).ok();
    let mut c = env.command();
    c.args([
        "ls",
        "--json",
        "-r",
        "--destination",
        "far",
        "--config",
        &config,
    ]);
    let run = TestEnv::run_cmd(c).ok();
    assert!(run.stdout.contains("far/x/y.txt"), "{run}");
    // A target in the destination's bucket goes to its endpoint too.
    let mut c = env.command();
    c.args(["ls", "-r", &far.url(), "--config", &config]);
    let run = TestEnv::run_cmd(c).ok();
    assert!(run.stdout.contains("y.txt"), "{run}");
    let mut c = env.command();
    c.args(["ls", "--destination", "nowhere", "--config", &config]);
    let run = TestEnv::run_cmd(c).code(2);
    assert!(run.stderr.contains("it has: far"), "{run}");
}

#[test]
fn a_destination_on_the_command_line_leaves_the_configs_alone() {
    let env = TestEnv::new(Kind::S3sFs);
    let near = env.second(Kind::S3sFs, &env.endpoint, "near/");
    let config = config_with(&env, &[entry("near", &near)]);
    env.write("a.txt", "a");
    // Another bucket given by hand: the config's destinations belong to
    // the config's own bucket and get nothing (no deletions either).
    let other = env.second(Kind::S3sFs, &env.endpoint, "");
    block_on(
        near.client
            .put_object()
            .bucket(&near.bucket)
            .key("near/keep.txt")
            .body(b"not from this tree".to_vec().into())
            .send(),
    )
    .expect("put");
    let tree = env.tree().display().to_string();
    // The config's own bucket named on the command line: they go along.
    let mut c = env.command();
    c.args(["sync", &tree, &env.dest(), "--json", "--config", &config]);
    let run = TestEnv::run_cmd(c).ok();
    assert_eq!(
        keys_of(&run.stdout, "copy", Some("near")),
        ["near/a.txt"],
        "{run}"
    );
    block_on(
        near.client
            .delete_object()
            .bucket(&near.bucket)
            .key("near/a.txt")
            .send(),
    )
    .expect("delete");
    let mut c = env.command();
    c.args(["sync", &tree, &other.url(), "--delete", "--config", &config]);
    let run = TestEnv::run_cmd(c).ok();
    assert!(run.stderr.contains("left out"), "{run}");
    assert_eq!(other.listing().len(), 1, "{run}");
    let untouched: Vec<String> = near.listing().into_keys().collect();
    assert_eq!(untouched, ["near/keep.txt"], "{run}");
}

#[test]
fn in_watch_a_broken_destination_leaves_the_others_running() {
    let env = TestEnv::new(Kind::S3sFs);
    let near = env.second(Kind::S3sFs, &env.endpoint, "near/");
    let missing = Bucket {
        kind: env.kind,
        endpoint: env.endpoint.clone(),
        bucket: "no-such-bucket-for-s3ma".into(),
        prefix: "x/".into(),
        client: env.client.clone(),
    };
    let config = config_with(&env, &[entry("gone", &missing), entry("near", &near)]);
    env.write("a.txt", "before");
    let tree = env.tree().display().to_string();
    let mut w = env.watch_args(&[&tree, "--config", &config]);
    env.converge_on(&env.primary(), WITHIN, &|| w.logs());
    env.converge_on(&near, WITHIN, &|| w.logs());
    env.write("b.txt", "while one destination is broken");
    env.converge_on(&env.primary(), WITHIN, &|| w.logs());
    env.converge_on(&near, WITHIN, &|| w.logs());
    assert!(
        w.actions("error").iter().any(|v| v["dest"] == "gone"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("no-such-bucket-for-s3ma"))),
        "the broken destination says why:\n{}",
        w.logs()
    );
    assert_eq!(w.term(), 0, "{}", w.logs());
}

#[test]
fn overlapping_or_unnamed_twin_destinations_are_refused() {
    let env = TestEnv::new(Kind::S3sFs);
    let same = Bucket {
        kind: env.kind,
        endpoint: env.endpoint.clone(),
        bucket: env.bucket.clone(),
        prefix: format!("{}inner/", env.prefix),
        client: env.client.clone(),
    };
    let config = config_with(&env, &[entry("inside", &same)]);
    env.write("a.txt", "a");
    let run = sync_with(&env, &config, &[]).code(2);
    assert!(run.stderr.contains("overlaps the primary"), "{run}");
    assert!(env.listing().is_empty(), "nothing was sent: {run}");
    let one = env.second(Kind::S3sFs, &env.endpoint, "one/");
    let two = env.second(Kind::S3sFs, &env.endpoint, "two/");
    let config = config_with(&env, &[entry("twin", &one), entry("twin", &two)]);
    let run = sync_with(&env, &config, &[]).code(2);
    assert!(run.stderr.contains("two destinations are named"), "{run}");
    assert!(env.listing().is_empty(), "nothing was sent: {run}");
}

#[test]
fn restore_reads_a_further_destination_through_its_own_connection() {
    let env = TestEnv::new(Kind::S3sFs);
    // On the other server, which only that destination's endpoint reaches.
    let far = env.second(Kind::Moto, &endpoint(Kind::Moto), "far/");
    let config = config_with(&env, &[entry("far", &far)]);
    env.write("a.txt", "alpha");
    env.write("dir/b.txt", "beta");
    sync_with(&env, &config, &[]).ok();
    // The primary loses a file; the destination still has it.
    block_on(
        env.client
            .delete_object()
            .bucket(&env.bucket)
            .key(format!("{}a.txt", env.prefix))
            .send(),
    )
    .expect("delete");
    let dir = env.work().join("from-far");
    let mut c = env.command();
    c.args(["restore", &dir.display().to_string(), "--json"])
        .args(["--config", &config, "--destination", "far"]);
    let run = TestEnv::run_cmd(c).ok();
    assert_eq!(run.summary()["downloaded"], 2, "{run}");
    assert_eq!(std::fs::read(dir.join("a.txt")).expect("a"), b"alpha");
    assert_eq!(std::fs::read(dir.join("dir/b.txt")).expect("b"), b"beta");
    // Without --destination: the config's own bucket, which lacks a.txt.
    let primary = env.work().join("from-primary");
    let mut c = env.command();
    c.args(["restore", &primary.display().to_string(), "--json"])
        .args(["--config", &config]);
    let run = TestEnv::run_cmd(c).ok();
    assert_eq!(run.summary()["downloaded"], 1, "{run}");
    assert!(!primary.join("a.txt").exists());
}
