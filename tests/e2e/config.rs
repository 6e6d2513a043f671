//! Configuration: node-s3ma's config.json, precedence, and bad input.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::harness::*;

fn write_config(env: &TestEnv, body: &str) -> std::path::PathBuf {
    let dir = env.work().join("conf");
    std::fs::create_dir_all(&dir).expect("mkdir conf");
    let path = dir.join("config.json");
    write_file(&path, body);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

#[test]
fn node_s3ma_config_json_keeps_working() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("index.html", "<p>home</p>");
        env.write("data/report.test", "custom type");
        let mime = env.work().join("my_mime.types");
        write_file(&mime, "# local types\napplication/x-test  test\n");
        let second = env.second(kind, &env.endpoint, "mirror/");
        // A schemeless endpointSync is https, or http with sslEnabled false.
        let host = env.endpoint.trim_start_matches("http://");
        let config = format!(
            r#"{{
    "watchDir": "{tree}",
    "accessKeyId": "{ACCESS_KEY}",
    "secretAccessKey": "{SECRET_KEY}",
    "region": "us-west-2",
    "sslEnabled": false,
    "bucket": "{bucket}",
    "topPrefix": "backup/",
    "bucketSync": "{bucket_sync}",
    "topPrefixSync": "mirror/",
    "endpointSync": "{host}",
    "mtimeToMetaData": true,
    "mimeConfig": "{mime}"
}}"#,
            tree = env.tree().display(),
            bucket = env.bucket,
            bucket_sync = second.bucket,
            mime = mime.display()
        );
        write_config(&env, &config);
        // ./conf/config.json is found without --config; the keys in it are
        // used before the environment's (deliberately wrong) ones.
        let mut cmd = env.command();
        cmd.env("AWS_ACCESS_KEY_ID", "wrong")
            .env("AWS_SECRET_ACCESS_KEY", "wrong")
            .args(["sync", "--json", "--endpoint", &env.endpoint]);
        let run = TestEnv::run_cmd(cmd).ok();
        let mut env = env;
        env.prefix = "backup/".into();
        env.assert_mirrors(&["data/report.test", "index.html"]);
        // bucketSync got the same objects, copied on the server.
        env.converge_on(&second, Duration::ZERO, &|| run.to_string());
        let copies: Vec<&str> = run
            .stdout
            .lines()
            .filter(|l| l.contains(r#""action":"copy""#) && l.contains(r#""dest":"bucketSync""#))
            .collect();
        assert_eq!(copies.len(), 2, "{run}");
        let (ctype, meta, _) = second.head("mirror/data/report.test");
        assert_eq!(ctype, "application/x-test", "{kind:?}");
        assert_eq!(
            meta.get("md5chksum").map(String::as_str),
            Some(md5_b64(b"custom type").as_str())
        );
        let (ctype, _, _) = env.head("backup/data/report.test");
        assert_eq!(ctype, "application/x-test", "{kind:?}");
    }
}

#[test]
fn flags_override_the_config_file() {
    let env = TestEnv::new(Kind::Moto);
    env.write("a.txt", "a");
    let config = format!(
        r#"{{"watchDir": "/nonexistent/dir", "bucket": "{}", "topPrefix": "from-config", "endpoint": "http://127.0.0.1:9"}}"#,
        env.bucket
    );
    let path = write_config(&env, &config);
    let tree = env.tree().display().to_string();
    let mut cmd = env.command();
    cmd.args([
        "--config",
        &path.display().to_string(),
        "sync",
        &tree,
        "--endpoint",
        &env.endpoint,
    ]);
    TestEnv::run_cmd(cmd).ok();
    assert_eq!(env.keys(), ["from-config/a.txt"]);
    // S3MA_CONFIG works as --config does.
    let mut cmd = env.command();
    cmd.env("S3MA_CONFIG", &path)
        .args(["sync", &tree, "s3://x/y", "--dry-run"]);
    let run = TestEnv::run_cmd(cmd);
    assert!(
        run.stderr.contains("127.0.0.1:9"),
        "endpoint from the config: {run}"
    );
}

#[test]
fn bad_config_files_are_usage_errors_that_say_what_and_where() {
    let env = TestEnv::new(Kind::S3sFs);
    let cases: &[(&str, &[&str])] = &[
        (
            "{\n  \"bucket\": \"b\",\n  \"topPrefix\": \"x\"\n  \"region\": \"r\"\n}\n",
            &["config.json", "invalid JSON at line 4, column 3"],
        ),
        (
            r#"{"bucket": "b", "topPrefx": "x"}"#,
            &["unknown key \"topPrefx\"", "did you mean \"topPrefix\""],
        ),
        (
            r#"{"bucket": "b", "mtimeToMetaData": "yes"}"#,
            &["key \"mtimeToMetaData\"", "expected a boolean"],
        ),
        (r#"{"concurrency": -3}"#, &["key \"concurrency\"", "line 1"]),
        (r#"["not", "an", "object"]"#, &["must be a JSON object"]),
    ];
    for (body, wanted) in cases {
        let path = write_config(&env, body);
        let run = env
            .s3ma(&["sync", "--config", &path.display().to_string()])
            .code(2);
        for w in *wanted {
            assert!(run.stderr.contains(w), "{body}: wanted {w:?} in {run}");
        }
    }
}

#[test]
fn readable_secret_config_warns() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let config = format!(
        r#"{{"watchDir": "{}", "bucket": "{}", "accessKeyId": "{ACCESS_KEY}", "secretAccessKey": "{SECRET_KEY}"}}"#,
        env.tree().display(),
        env.bucket
    );
    let path = write_config(&env, &config);
    let run = env
        .s3ma(&["sync", "--config", &path.display().to_string()])
        .ok();
    assert!(!run.stderr.contains("chmod 600"), "0600 is fine: {run}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let run = env
        .s3ma(&["sync", "--config", &path.display().to_string()])
        .ok();
    assert!(run.stderr.contains("readable by group or others"), "{run}");
    assert!(run.stderr.contains("chmod 600"), "{run}");
    assert!(
        !run.all().contains(SECRET_KEY),
        "the secret never shows: {run}"
    );
}

#[test]
fn missing_config_file_and_missing_destination_are_usage_errors() {
    let env = TestEnv::new(Kind::S3sFs);
    let run = env
        .s3ma(&["sync", "--config", "/nonexistent/config.json"])
        .code(2);
    assert!(run.stderr.contains("/nonexistent/config.json"), "{run}");
    let tree = env.tree().display().to_string();
    let run = env.s3ma(&["sync", &tree]).code(2);
    assert!(run.stderr.contains("no destination given"), "{run}");
    let run = env.s3ma(&["sync", &tree, "not-an-s3-url"]).code(2);
    assert!(run.stderr.contains("s3://BUCKET"), "{run}");
    let run = env
        .s3ma(&["sync", &tree, &env.dest(), "--multipart-chunk-size", "1MiB"])
        .code(2);
    assert!(run.stderr.contains("at least 5MiB"), "{run}");
    let run = env
        .s3ma(&["sync", &tree, &env.dest(), "--frobnicate"])
        .code(2);
    assert!(run.stderr.contains("--frobnicate"), "{run}");
}

#[test]
fn profile_flag_uses_that_profile_alone() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let creds = env.work().join("credentials");
    write_file(
        &creds,
        &format!(
            "[good]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n\n\
             [bad]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = not-the-secret\n"
        ),
    );
    let tree = env.tree().display().to_string();
    let dest = env.dest();
    let sync = |profile: &str, env_secret: &str| {
        let mut cmd = env.command();
        cmd.env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_CONFIG_FILE", env.work().join("no-config"))
            .env("AWS_SECRET_ACCESS_KEY", env_secret)
            .args([
                "sync",
                &tree,
                &dest,
                "--endpoint",
                &env.endpoint,
                "--profile",
                profile,
            ]);
        TestEnv::run_cmd(cmd)
    };
    // The profile wins over (wrong) keys in the environment…
    sync("good", "wrong-env-secret").ok();
    // …and a wrong profile is not rescued by right keys in the environment.
    let run = sync("bad", SECRET_KEY).code(3);
    assert!(run.stderr.contains("rejected the credentials"), "{run}");
    assert_eq!(env.keys(), ["site/a.txt"]);
}

#[test]
fn mtime_to_meta_data_false_leaves_out_mtime() {
    let env = TestEnv::new(Kind::Moto);
    env.write("a.txt", "a");
    let path = write_config(&env, r#"{"mtimeToMetaData": false}"#);
    let tree = env.tree().display().to_string();
    let config = path.display().to_string();
    env.s3ma(&["sync", &tree, &env.dest(), "--config", &config])
        .ok();
    let (_, meta, _) = env.head("site/a.txt");
    assert!(!meta.contains_key("mtime"), "{meta:?}");
    assert_eq!(meta["md5chksum"], md5_b64(b"a"));
    // Without the mtime, a re-run after losing the state still finds the
    // content unchanged through the MD5.
    std::fs::remove_dir_all(env.state_dir()).expect("drop state");
    let run = env
        .s3ma(&["sync", &tree, &env.dest(), "--config", &config, "--json"])
        .ok();
    assert_eq!(run.summary()["uploaded"], 0, "{run}");
}

#[test]
fn no_delete_overrides_delete_in_the_config() {
    let env = TestEnv::new(Kind::Moto);
    env.write("a.txt", "a");
    env.put("site/extra.txt", b"e");
    let path = write_config(&env, r#"{"delete": true}"#);
    let config = path.display().to_string();
    let tree = env.tree().display().to_string();
    env.s3ma(&[
        "sync",
        &tree,
        &env.dest(),
        "--config",
        &config,
        "--no-delete",
    ])
    .ok();
    assert_eq!(env.keys(), ["site/a.txt", "site/extra.txt"]);
    env.s3ma(&["sync", &tree, &env.dest(), "--config", &config])
        .ok();
    assert_eq!(env.keys(), ["site/a.txt"]);
}

#[test]
fn endpoint_and_region_from_the_environment_and_any_region_name() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let tree = env.tree().display().to_string();
    for var in ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"] {
        let mut cmd = env.command();
        cmd.env(var, &env.endpoint)
            .env("AWS_REGION", "ap-northeast1")
            .args(["sync", &tree, &env.dest(), "--json"]);
        let run = TestEnv::run_cmd(cmd).ok();
        assert_eq!(run.summary()["scanned"], 1, "{var}: {run}");
    }
    let mut cmd = env.command();
    cmd.args(["ls", "--endpoint", &env.endpoint, "--region", "jp-north-1"]);
    let run = TestEnv::run_cmd(cmd).ok();
    assert!(run.stdout.contains(&env.bucket), "{run}");
    assert_eq!(env.keys(), ["site/a.txt"]);
}
