//! Running for months: `s3ma status` beside a running daemon, and the
//! systemd notifications, heard on a socket the test listens on.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::harness::*;

const WITHIN: Duration = Duration::from_secs(60);

/// `s3ma status TREE DEST --json`: the exit code and the object.
fn status(env: &TestEnv) -> (i32, serde_json::Value) {
    let tree = env.tree().display().to_string();
    let run = env.s3ma(&["status", &tree, &env.dest(), "--json"]);
    let v = run
        .stdout
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| panic!("no JSON from status:\n{run}"));
    (run.code, v)
}

/// Polls `status` until `want` holds of its object.
fn status_until(
    env: &TestEnv,
    what: &str,
    want: impl Fn(i32, &serde_json::Value) -> bool,
    logs: &dyn Fn() -> String,
) -> serde_json::Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        let (code, v) = status(env);
        if want(code, &v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}; last: exit {code} {v}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_beside_a_running_watch_and_after_it() {
    let env = TestEnv::new(Kind::S3sFs);
    for f in ["a.txt", "b.txt", "c.txt", "d.txt"] {
        env.write(f, f);
    }
    // Nothing has run yet: that needs attention.
    let (code, v) = status(&env);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["healthy"], false, "{v}");
    let mut w = env.watch(&["--delete", "--max-delete", "1"]);
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    let pid = w.pid();
    let v = status_until(
        &env,
        "a healthy running daemon",
        |code, v| code == 0 && v["running"] == true,
        &|| w.logs(),
    );
    assert_eq!(v["pid"], pid, "{v}");
    assert_eq!(v["command"], "watch", "{v}");
    assert_eq!(v["last_reconcile"]["why"], "start", "{v}");
    assert_eq!(v["last_reconcile"]["uploaded"], 4, "{v}");
    // Over the cap: deletions are held, and status says so.
    for f in ["b.txt", "c.txt", "d.txt"] {
        std::fs::remove_file(env.tree().join(f)).expect("rm");
    }
    let v = status_until(
        &env,
        "held deletions",
        |code, v| code == 1 && v["held"].as_u64().is_some_and(|h| h >= 2),
        &|| w.logs(),
    );
    assert!(
        v["problems"].to_string().contains("held by --max-delete"),
        "{v}"
    );
    // Text too; a reader that stops early is no failure.
    let tree = env.tree().display().to_string();
    let mut cmd = env.command_for("bash");
    cmd.arg("-c")
        .arg(r#"set -o pipefail; "$@" | head -c 1 >/dev/null"#)
        .arg("bash")
        .arg(env!("CARGO_BIN_EXE_s3ma"))
        .args(["status", &tree, &env.dest(), "--endpoint", &env.endpoint]);
    let run = TestEnv::run_cmd(cmd);
    assert!(!run.stderr.contains("panicked"), "{run}");
    let run = env.s3ma(&["status", &tree, &env.dest()]).code(1);
    assert!(run.stdout.contains("watch: running"), "{run}");
    assert!(run.stdout.contains("needs attention"), "{run}");
    assert_eq!(w.term(), 0);
    let (code, v) = status(&env);
    assert_eq!((code, &v["running"]), (1, &false.into()), "{v}");
    assert!(
        v["problems"]
            .to_string()
            .contains("no watch daemon is running"),
        "{v}"
    );
}

#[test]
fn status_after_a_sync_from_cron() {
    let env = TestEnv::new(Kind::Moto);
    env.write("a.txt", "a");
    env.write("b.txt", "b");
    env.sync(&[]).ok();
    let (code, v) = status(&env);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["command"], "sync", "{v}");
    assert_eq!(v["running"], false, "a finished sync is no daemon: {v}");
    assert_eq!(v["last_reconcile"]["uploaded"], 2, "{v}");
    assert!(
        v["last_upload"]["key"]
            .as_str()
            .is_some_and(|k| k.ends_with(".txt")),
        "{v}"
    );
}

/// The notifications on `sock` until `done` holds of them all, as one
/// string per datagram.
fn hear_until(
    sock: &UnixDatagram,
    heard: &mut Vec<String>,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + WITHIN;
    let mut buf = vec![0u8; 65536];
    while !done(heard) {
        assert!(
            Instant::now() < deadline,
            "systemd never heard {what}; heard: {heard:#?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn systemd_hears_ready_status_watchdog_and_stopping() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let path = env.work().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut cmd = env.command();
    cmd.env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "5000000");
    let tree = env.tree().display().to_string();
    let dest = env.dest();
    let mut w = env.watch_as(cmd, &[&tree, &dest, "--endpoint", &env.endpoint]);
    let mut heard = Vec::new();
    hear_until(&sock, &mut heard, "READY=1", |h| {
        h.iter().any(|m| m.lines().any(|l| l == "READY=1"))
    });
    let ready = heard
        .iter()
        .find(|m| m.lines().any(|l| l == "READY=1"))
        .cloned()
        .unwrap_or_default();
    assert!(w.stdout().contains(r#""action":"ready""#), "{}", w.logs());
    assert!(ready.contains("STATUS="), "{ready}");
    assert!(ready.contains(&env.dest()), "{ready}");
    // Pings keep coming while the loop works.
    let before = heard.len();
    hear_until(&sock, &mut heard, "two watchdog pings", |h| {
        h[before..]
            .iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
            >= 2
    });
    w.signal("TERM");
    hear_until(&sock, &mut heard, "STOPPING=1", |h| {
        h.iter().any(|m| m.lines().any(|l| l == "STOPPING=1"))
    });
    assert_eq!(w.exit_code(), 0, "{}", w.logs());
}

#[test]
fn the_state_is_its_user_s_alone() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new(Kind::S3sFs);
    env.write("private/a.txt", "a");
    let state = env.work().join("new-state/inner");
    let state_arg = state.display().to_string();
    env.sync(&["--state-dir", &state_arg]).ok();
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(state.parent().expect("parent")), 0o700);
    let files: Vec<_> = std::fs::read_dir(&state)
        .expect("read state dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(
        files
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "db")),
        "{files:?}"
    );
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
}

#[test]
fn a_low_open_file_limit_lowers_the_concurrency_instead_of_failing_files() {
    let env = TestEnv::new(Kind::S3sFs);
    for i in 0..300 {
        env.write(&format!("f/{i:03}.txt"), format!("file {i}"));
    }
    let tree = env.tree().display().to_string();
    let mut cmd = env.command_for("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -Sn 160 && ulimit -Hn 160 && exec "$@""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_s3ma"))
        .args(["sync", &tree, &env.dest(), "--concurrency", "1024"])
        .args(["--endpoint", &env.endpoint]);
    let run = TestEnv::run_cmd(cmd).ok();
    assert!(run.stderr.contains("the open-file limit is 160"), "{run}");
    assert_eq!(run.stderr.matches("warning:").count(), 1, "{run}");
    assert!(!run.all().contains("Too many open files"), "{run}");
    assert_eq!(env.keys().len(), 300);
}

/// `GET /metrics` over plain HTTP/1.1: the body.
fn scrape(addr: &str) -> String {
    scrape_as(addr, "*/*")
}

/// `GET /metrics` with this `Accept`: the body.
fn scrape_as(addr: &str, accept: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of `name{dest="…"}` in Prometheus text.
fn metric(text: &str, name: &str, dest: &str) -> Option<f64> {
    let prefix = format!("{name}{{dest=\"{dest}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_are_served_while_watch_runs_and_written_for_textfile() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "alpha");
    env.write("b.txt", "bravo");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let file = env.work().join("s3ma.prom");
    let file_arg = file.display().to_string();
    let mut w = env.watch(&["--metrics-addr", &addr, "--metrics-file", &file_arg]);
    w.ready();
    env.converge(WITHIN, &|| w.logs());
    let dest = env.dest();
    let deadline = Instant::now() + WITHIN;
    let text = loop {
        let text = scrape(&addr);
        if metric(&text, "s3ma_last_reconcile_timestamp_seconds", &dest).is_some() {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}\n{}", w.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        metric(&text, "s3ma_uploads_total", &dest),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "s3ma_uploaded_bytes_total", &dest),
        Some(10.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "s3ma_pending_paths", &dest),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "s3ma_inotify_watches", &dest),
        Some(1.0),
        "{text}"
    );
    // The classic text format (node_exporter, older scrapers) names a
    // counter family as its samples; OpenMetrics to those that ask.
    assert!(text.contains("# TYPE s3ma_uploads_total counter"), "{text}");
    assert!(!text.contains("# EOF"), "{text}");
    let open = scrape_as(&addr, "application/openmetrics-text;version=1.0.0");
    assert!(open.contains("# TYPE s3ma_uploads counter"), "{open}");
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(text.contains("s3ma_inotify_max_user_watches "), "{text}");
    let class = format!(r#"s3ma_transfer_failures_total{{dest="{dest}",class="server"}} 0"#);
    assert!(text.contains(&class), "{text}");
    // A change shows up in the next scrape.
    env.write("c.txt", "charlie");
    let deadline = Instant::now() + WITHIN;
    while metric(&scrape(&addr), "s3ma_uploads_total", &dest) != Some(3.0) {
        assert!(Instant::now() < deadline, "{}", w.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.term(), 0);
    // The file holds the same, written atomically; last at the stop.
    let written = std::fs::read_to_string(&file).expect("metrics file");
    assert_eq!(
        metric(&written, "s3ma_uploads_total", &dest),
        Some(3.0),
        "{written}"
    );
    assert!(
        written.contains("# TYPE s3ma_uploads_total counter"),
        "{written}"
    );
}

#[test]
fn sync_writes_the_metrics_file_for_cron() {
    let env = TestEnv::new(Kind::Moto);
    env.write("a.txt", "alpha");
    let file = env.work().join("sync.prom");
    env.sync(&["--metrics-file", &file.display().to_string()])
        .ok();
    let text = std::fs::read_to_string(&file).expect("metrics file");
    let dest = env.dest();
    assert_eq!(
        metric(&text, "s3ma_uploads_total", &dest),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(&text, "s3ma_last_reconcile_timestamp_seconds", &dest).is_some_and(|t| t > 1.7e9),
        "{text}"
    );
    // A file that cannot be written is an error, shown even with -q.
    let dir = env.work().join("a-directory");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let run = env
        .sync(&["-q", "--metrics-file", &dir.display().to_string()])
        .code(1);
    assert!(run.all().contains("cannot write the metrics file"), "{run}");
    // A port in use is a configuration error, before anything runs.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = busy.local_addr().expect("addr").to_string();
    let tree = env.tree().display().to_string();
    let run = env
        .s3ma(&["watch", &tree, &env.dest(), "--metrics-addr", &taken])
        .code(2);
    assert!(run.stderr.contains("--metrics-addr"), "{run}");
}

#[test]
fn bwlimit_holds_all_uploads_together_to_the_rate() {
    let env = TestEnv::new(Kind::S3sFs);
    // 3 MiB in one file and 2 MiB over eight files sent at once: at 1 MiB/s
    // together, at least about 4 s (a lower bound only: a loaded machine
    // makes it slower, never faster).
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 253) as u8).collect();
    env.write("big.bin", &big);
    for i in 0..8 {
        env.write(&format!("small/{i}.bin"), vec![i as u8; 256 << 10]);
    }
    let started = Instant::now();
    let run = env.sync(&["--bwlimit", "1M"]).ok();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(3500), "{took:?}: {run}");
    env.converge(Duration::ZERO, &|| run.to_string());
    // A low rate over a body larger than one read: bytes keep flowing (the
    // SDK takes a body silent for 5 s for a stalled one).
    env.write("slow/one.bin", vec![7u8; 300_000]);
    let started = Instant::now();
    let run = env.sync(&["--bwlimit", "48K", "--retries", "1"]).ok();
    assert!(started.elapsed() >= Duration::from_secs(5), "{run}");
    assert_eq!(run.summary()["uploaded"], 1, "{run}");
    // A bad rate is a usage error.
    let run = env.sync(&["--bwlimit", "fast"]).code(2);
    assert!(run.stderr.contains("--bwlimit"), "{run}");
    let run = env.sync(&["--bwlimit", "25:00,1M"]).code(2);
    assert!(run.stderr.contains("not a time of day"), "{run}");
}

/// Starts `s3ma watch` with stderr into `err`, `JOURNAL_STREAM` naming that
/// file when `journald`, stops it, and returns its stderr.
fn watch_stderr(env: &TestEnv, journald: bool) -> String {
    use std::os::unix::fs::MetadataExt;
    let err = env.work().join(format!("watch-{journald}.err"));
    let file = std::fs::File::create(&err).expect("stderr file");
    let meta = file.metadata().expect("stat");
    let mut cmd = env.command();
    if journald {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    cmd.args(["watch", &env.tree().display().to_string(), &env.dest()])
        .args(["--endpoint", &env.endpoint, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(file);
    let mut child = cmd.spawn().expect("spawn watch");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    // Ready: then a SIGTERM makes it warn, on stderr.
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains(r#""action":"ready""#))),
        "no ready line"
    );
    let _ = std::process::Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    std::fs::read_to_string(&err).expect("read stderr")
}

#[test]
fn watch_lines_carry_a_time_except_under_journald() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let stamped =
        |line: &str| line.len() > 21 && line.as_bytes()[10] == b'T' && line[..21].ends_with("Z ");
    let into_file = watch_stderr(&env, false);
    let line = into_file
        .lines()
        .find(|l| l.contains("interrupted"))
        .unwrap_or_else(|| panic!("no interrupted line: {into_file}"));
    assert!(stamped(line), "{line}");
    let journald = watch_stderr(&env, true);
    let line = journald
        .lines()
        .find(|l| l.contains("interrupted"))
        .unwrap_or_else(|| panic!("no interrupted line: {journald}"));
    assert!(line.starts_with("warning: "), "{line}");
    // --log-timestamps asks for them anywhere.
    let run = env
        .s3ma(&[
            "sync",
            "--log-timestamps",
            &env.tree().display().to_string(),
            &env.dest(),
        ])
        .ok();
    assert!(run.stdout.lines().all(stamped), "{run}");
}
