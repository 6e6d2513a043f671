//! Errors a user meets: wrong credentials, unreachable endpoints, missing
//! buckets; never a panic, never a hang, never a secret in the output.

use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn wrong_credentials_say_so_and_never_show_the_secret() {
    // moto accepts any signature; s3s-fs checks them.
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let secret = "WRONG-secret-value-5f3c9a";
    let tree = env.tree().display().to_string();
    for args in [
        vec!["-vv", "sync", tree.as_str(), env.dest().as_str()],
        vec!["ls", "-vv", "--json"],
    ] {
        let token = "SESSION-token-value-8d1e07";
        let mut cmd = env.command();
        cmd.env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_SESSION_TOKEN", token)
            .args(&args)
            .args(["--endpoint", &env.endpoint]);
        let run = TestEnv::run_cmd(cmd).code(3);
        assert!(run.stderr.contains("rejected the credentials"), "{run}");
        assert!(!run.all().contains(secret), "secret leaked: {run}");
        assert!(!run.all().contains(token), "session token leaked: {run}");
        assert!(
            !run.all().contains("Signature="),
            "a signature leaked: {run}"
        );
        assert!(!run.all().contains("panicked"), "{run}");
    }
    assert!(env.keys().is_empty());
}

#[test]
fn unreachable_endpoint_fails_fast_and_names_it() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    // Nothing listens on a port we just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let tree = env.tree().display().to_string();
    let started = Instant::now();
    let mut cmd = env.command();
    cmd.args([
        "sync",
        &tree,
        &env.dest(),
        "--endpoint",
        &url,
        "--retries",
        "2",
    ]);
    let run = TestEnv::run_cmd(cmd).code(3);
    assert!(started.elapsed() < Duration::from_secs(60), "no hang");
    assert!(run.stderr.contains(&format!("cannot reach {url}")), "{run}");
    assert!(run.stderr.contains("Connection refused"), "{run}");
}

#[test]
fn endpoint_without_scheme_means_https() {
    let env = TestEnv::new(Kind::S3sFs);
    // The plain-HTTP test server cannot speak TLS, so the https attempt
    // fails, and the message shows the https URL that was tried.
    let host = env.endpoint.trim_start_matches("http://").to_string();
    let mut cmd = env.command();
    cmd.args(["ls", "--endpoint", &host, "--retries", "1"]);
    let run = TestEnv::run_cmd(cmd).code(3);
    assert!(run.stderr.contains(&format!("https://{host}")), "{run}");
}

#[test]
fn sync_to_a_missing_bucket_is_fatal_and_clear() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("a.txt", "a");
        let tree = env.tree().display().to_string();
        let run = env
            .s3ma(&["sync", &tree, "s3://no-such-bucket-s3ma/p"])
            .code(3);
        assert!(
            run.stderr
                .contains("bucket 'no-such-bucket-s3ma' does not exist"),
            "{kind:?}: {run}"
        );
    }
}

#[test]
fn bad_ca_bundle_is_a_clear_error() {
    let env = TestEnv::new(Kind::S3sFs);
    let pem = env.work().join("bad.pem");
    write_file(&pem, "not a certificate\n");
    let mut cmd = env.command();
    cmd.args([
        "ls",
        "--endpoint",
        &env.endpoint,
        "--ca-bundle",
        &pem.display().to_string(),
    ]);
    // A mistake in the configuration: exit 2, with where it was set.
    let run = TestEnv::run_cmd(cmd).code(2);
    assert!(run.stderr.contains("bad.pem"), "{run}");
    assert!(run.stderr.contains("holds no certificate"), "{run}");
    assert!(run.stderr.contains("given by --ca-bundle"), "{run}");
    let mut cmd = env.command();
    cmd.env("AWS_CA_BUNDLE", "/nonexistent/ca.pem")
        .args(["ls", "--endpoint", &env.endpoint]);
    let run = TestEnv::run_cmd(cmd).code(2);
    assert!(run.stderr.contains("given by AWS_CA_BUNDLE"), "{run}");
}

#[test]
fn completions_are_printed() {
    let env = TestEnv::new(Kind::S3sFs);
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = env.command();
        cmd.args(["completions", shell]);
        let run = TestEnv::run_cmd(cmd).ok();
        assert!(run.stdout.contains("s3ma"), "{shell}: {run}");
        assert!(run.stdout.contains("dry-run"), "{shell}: {run}");
    }
}

#[test]
fn no_credentials_anywhere_says_where_to_put_them() {
    let env = TestEnv::new(Kind::S3sFs);
    let mut cmd = env.command();
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["ls", "--endpoint", &env.endpoint]);
    let run = TestEnv::run_cmd(cmd).code(3);
    assert!(
        run.stderr
            .contains("no credentials from the AWS credential chain"),
        "{run}"
    );
    assert!(run.stderr.contains("AWS_ACCESS_KEY_ID"), "{run}");
    // A profile that exists but holds no keys is named, and is not an
    // unreachable server.
    let home = env.work().join("home");
    std::fs::create_dir_all(home.join(".aws")).expect("mkdir");
    write_file(
        &home.join(".aws/config"),
        "[profile empty]\nregion = us-east-1\n",
    );
    let mut cmd = env.command();
    cmd.env("HOME", &home)
        .args(["ls", "--endpoint", &env.endpoint, "--profile", "empty"]);
    let run = TestEnv::run_cmd(cmd).code(3);
    assert!(
        run.stderr
            .contains("no credentials from the profile 'empty'"),
        "{run}"
    );
    assert!(!run.stderr.contains("cannot reach"), "{run}");
}

/// A private CA and a certificate for 127.0.0.1 signed by it.
fn private_ca(dir: &std::path::Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=s3ma test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[test]
fn private_ca_needs_ca_bundle_and_works_with_it() {
    let env = TestEnv::new(Kind::S3sFs);
    let dir = env.work().join("tls");
    std::fs::create_dir_all(&dir).expect("mkdir");
    private_ca(&dir);
    let tls = start_tls_moto(&dir.join("server.pem"), &dir.join("server.key"));
    let url = tls.endpoint.clone();

    let mut cmd = env.command();
    cmd.args(["ls", "--endpoint", &url, "--retries", "1"]);
    let run = TestEnv::run_cmd(cmd).code(3);
    assert!(run.stderr.contains("--ca-bundle"), "{run}");

    let ca = dir.join("ca.pem").display().to_string();
    let mut cmd = env.command();
    cmd.args(["ls", "--endpoint", &url, "--ca-bundle", &ca]);
    TestEnv::run_cmd(cmd).ok();
    let mut cmd = env.command();
    cmd.env("AWS_CA_BUNDLE", &ca)
        .args(["ls", "--endpoint", &url]);
    TestEnv::run_cmd(cmd).ok();
}

/// A self-signed certificate for `cn` and `san` as `openssl req -x509`
/// makes it, marked CA:TRUE, in NAME.pem with its key in NAME.key.
fn self_signed(dir: &std::path::Path, name: &str, cn: &str, san: &str) -> String {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    let subj = format!("/CN={cn}");
    let ext = format!("subjectAltName={san}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem,
            "-days", "2", "-subj", &subj, "-addext", &ext,
        ],
    );
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "basicConstraints", "-in"])
        .arg(dir.join(&pem))
        .output()
        .expect("openssl x509");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CA:TRUE"), "not a CA certificate: {text}");
    dir.join(&pem).display().to_string()
}

/// `s3ma ls --endpoint URL --retries 1 EXTRA…`.
fn ls_at(env: &TestEnv, url: &str, extra: &[&str]) -> Run {
    let mut cmd = env.command();
    cmd.args(["ls", "--endpoint", url, "--retries", "1"])
        .args(extra);
    TestEnv::run_cmd(cmd)
}

fn tls_dir(env: &TestEnv) -> std::path::PathBuf {
    let dir = env.work().join("tls");
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn a_self_signed_certificate_given_as_ca_bundle_is_trusted() {
    let env = TestEnv::new(Kind::S3sFs);
    let dir = tls_dir(&env);
    let pem = self_signed(&dir, "self", "127.0.0.1", "IP:127.0.0.1,DNS:localhost");
    let tls = start_tls_moto(&dir.join("self.pem"), &dir.join("self.key"));

    let run = ls_at(&env, &tls.endpoint, &[]).code(3);
    assert!(run.stderr.contains("pass --ca-bundle"), "{run}");

    ls_at(&env, &tls.endpoint, &["--ca-bundle", &pem]).ok();
}

#[test]
fn a_bundled_certificate_for_another_host_names_the_mismatch() {
    let env = TestEnv::new(Kind::S3sFs);
    let dir = tls_dir(&env);
    let pem = self_signed(&dir, "other", "other.example", "DNS:other.example");
    let tls = start_tls_moto(&dir.join("other.pem"), &dir.join("other.key"));

    let run = ls_at(&env, &tls.endpoint, &["--ca-bundle", &pem]).code(3);
    assert!(
        run.stderr.contains(
            "the server's TLS certificate is for DNS:other.example (its subjectAltName), \
             but the endpoint is 127.0.0.1"
        ),
        "{run}"
    );
    assert!(!run.stderr.contains("pass --ca-bundle"), "{run}");
}

#[test]
fn a_bundle_without_the_servers_certificate_says_so() {
    let env = TestEnv::new(Kind::S3sFs);
    let dir = tls_dir(&env);
    self_signed(&dir, "self", "127.0.0.1", "IP:127.0.0.1,DNS:localhost");
    let unrelated = self_signed(
        &dir,
        "unrelated",
        "unrelated.example",
        "DNS:unrelated.example",
    );

    let tls = start_tls_moto(&dir.join("self.pem"), &dir.join("self.key"));
    let run = ls_at(&env, &tls.endpoint, &["--ca-bundle", &unrelated]).code(3);
    let want = format!(
        "the server's TLS certificate (CN=127.0.0.1, self-signed) is not one of the \
         certificates in {unrelated}"
    );
    assert!(run.stderr.contains(&want), "{run}");
    assert!(!run.stderr.contains("pass --ca-bundle"), "{run}");
    drop(tls);

    // A certificate from a private CA that the bundle does not hold.
    private_ca(&dir);
    let tls = start_tls_moto(&dir.join("server.pem"), &dir.join("server.key"));
    let run = ls_at(&env, &tls.endpoint, &["--ca-bundle", &unrelated]).code(3);
    let want = format!(
        "the server's TLS certificate (CN=127.0.0.1, issued by CN=s3ma test CA) is not \
         issued by any certificate in {unrelated} or the system's roots, nor is it one of them"
    );
    assert!(run.stderr.contains(&want), "{run}");
    assert!(!run.stderr.contains("pass --ca-bundle"), "{run}");
}

#[test]
fn an_endpoint_that_is_not_s3_is_named_as_such() {
    let env = TestEnv::new(Kind::S3sFs);
    // A plain web server: every S3 path is a 404 page there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let web = env.work().join("www");
    std::fs::create_dir_all(&web).expect("mkdir");
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(&web)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = env.command();
    cmd.args([
        "ls",
        "s3://bucket/prefix/",
        "--endpoint",
        &url,
        "--retries",
        "1",
    ]);
    let run = TestEnv::run_cmd(cmd);
    let _ = server.kill();
    let _ = server.wait();
    let run = run.code(3);
    assert!(run.stderr.contains(&url), "{run}");
    assert!(run.stderr.contains("is it an S3 endpoint?"), "{run}");
    assert_eq!(run.stderr.lines().count(), 1, "{run}");
}

#[test]
fn a_silent_endpoint_times_out_instead_of_hanging() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    // Accepts connections, never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let tree = env.tree().display().to_string();
    for args in [vec!["ls"], vec!["sync", tree.as_str(), "s3://b/p"]] {
        let started = Instant::now();
        let mut cmd = env.command();
        cmd.args(&args)
            .args(["--endpoint", &url, "--read-timeout", "1", "--retries", "2"]);
        let run = TestEnv::run_cmd(cmd).code(3);
        assert!(started.elapsed() < Duration::from_secs(30), "{run}");
        assert!(run.stderr.contains(&url), "{run}");
        assert!(run.stderr.contains("no answer in time"), "{run}");
    }
    drop(listener);
}

#[test]
fn requests_at_vv_show_what_was_asked_and_never_a_secret() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let token = "SESSION-token-value-3e9b11";
    let mut cmd = env.command();
    cmd.env("AWS_SESSION_TOKEN", token).args([
        "-vv",
        "sync",
        &env.tree().display().to_string(),
        &env.dest(),
        "--endpoint",
        &env.endpoint,
    ]);
    let run = TestEnv::run_cmd(cmd).ok();
    let host = env.endpoint.trim_start_matches("http://");
    let put = format!("debug: PUT {host}/{}/{}a.txt", env.bucket, env.prefix);
    assert!(run.stderr.contains(&put), "{run}");
    assert!(
        run.stderr.lines().any(|l| l.starts_with("debug: GET")
            && l.contains("?list-type")
            && l.contains(" 200 ")),
        "{run}"
    );
    assert!(run.stderr.contains("(attempt 1)"), "{run}");
    for secret in [token, SECRET_KEY, "Signature=", "Credential="] {
        assert!(!run.all().contains(secret), "{secret} shown: {run}");
    }
}
