//! Server-side encryption: `--sse AES256 | aws:kms` and SSE-C with
//! `--sse-c-key-file`, on moto (which has them), and the clear error on a
//! server without them (s3s-fs).

use crate::harness::*;

/// The encryption a HEAD reports.
fn encryption(b: &Bucket, key: &str) -> Option<String> {
    let h = b.head_all(key);
    h.server_side_encryption().map(|s| s.as_str().to_string())
}

#[test]
fn sse_s3_and_kms_objects_are_encrypted_and_a_rerun_is_a_no_op() {
    for (mode, want) in [("AES256", "AES256"), ("aws:kms", "aws:kms")] {
        let env = TestEnv::new(Kind::Moto);
        env.write("a.txt", "secret a");
        env.write("dir/b.txt", "secret b");
        let sse = ["--sse", mode];
        let first = env.sync(&sse).ok();
        assert_eq!(first.summary()["uploaded"], 2, "{mode}: {first}");
        let b = env.primary();
        for key in ["a.txt", "dir/b.txt"] {
            let alg = encryption(&b, &format!("{}{key}", env.prefix));
            assert_eq!(alg.as_deref(), Some(want), "{mode} {key}");
        }
        let again = env.sync(&sse).ok();
        assert_eq!(again.summary()["uploaded"], 0, "{mode}: {again}");
        env.write("a.txt", "secret a, changed");
        let changed = env.sync(&sse).ok();
        assert_eq!(changed.summary()["uploaded"], 1, "{mode}: {changed}");
        env.converge(std::time::Duration::ZERO, &|| changed.to_string());
        let tree = env.tree().display().to_string();
        env.s3ma(&["verify", &tree, &env.dest(), "--sse", mode])
            .ok();
        env.s3ma(&["verify", &tree, &env.dest(), "--sse", mode, "--download"])
            .ok();
    }
}

#[test]
fn sse_c_on_a_server_that_ignores_it_stops_and_leaves_nothing_unencrypted() {
    // moto takes the SSE-C headers and stores the object in the clear: the
    // run must stop at once and take back what it wrote.
    let env = TestEnv::new(Kind::Moto);
    let key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(7).wrapping_add(3))
        .collect();
    let key_file = env.work().join("sse-c.key");
    std::fs::write(&key_file, &key).expect("key");
    let key_file = key_file.display().to_string();
    for i in 0..5 {
        env.write(&format!("secret{i}.txt"), "for my eyes only");
    }
    let run = env.sync(&["--sse-c-key-file", &key_file]).code(2);
    assert!(
        run.all()
            .contains("without the encryption --sse-c-key-file asks for")
            && run.all().contains("it was removed again"),
        "{run}"
    );
    assert!(
        env.listing().is_empty(),
        "left in the clear: {:?}",
        env.listing()
    );
    // A key file that holds no 256-bit key is refused before any request.
    let bad = env.work().join("short.key");
    std::fs::write(&bad, "too short").expect("bad key");
    let run = env
        .sync(&["--sse-c-key-file", &bad.display().to_string()])
        .code(2);
    assert!(run.all().contains("must hold a 256-bit key"), "{run}");
    // The base64 of a key is a key too (checked as far as the server).
    use base64::Engine as _;
    let b64 = env.work().join("b64.key");
    std::fs::write(&b64, base64::engine::general_purpose::STANDARD.encode(&key)).expect("key");
    let run = env
        .sync(&["--sse-c-key-file", &b64.display().to_string()])
        .code(2);
    assert!(run.all().contains("--sse-c-key-file asks for"), "{run}");
}

#[test]
fn a_server_without_encryption_stops_the_run_at_the_first_upload() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    env.write("b.txt", "b");
    let run = env.sync(&["--sse", "AES256"]).code(2);
    assert!(
        run.all()
            .contains("without the encryption --sse AES256 asks for"),
        "{run}"
    );
    let run = env.sync(&["--sse", "AES-256"]).code(2);
    assert!(run.all().contains("give AES256"), "{run}");
}
