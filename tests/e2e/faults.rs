//! Fault injection: a TCP proxy between s3ma and a real server that, per
//! connection and from a seed, answers 500 or 503 SlowDown, resets the
//! connection after the request head or in the middle of a body, or stalls
//! past the timeouts. With a fifth of the connections failing, `sync`
//! converges (within its retries, or on the next run), `watch` converges
//! without a restart, no multipart upload is left behind, and no object
//! ever holds partial content.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

/// What the proxy does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Pass,
    InternalError,
    SlowDown,
    ResetAfterHead,
    /// The request body is cut off halfway (the server never sees it).
    ResetInRequestBody,
    /// The response is cut off after a few bytes (the server did the work).
    ResetInResponse,
    /// Reads the request, then says nothing for longer than the timeouts.
    Stall,
}

const FAULTS: [Fault; 6] = [
    Fault::InternalError,
    Fault::SlowDown,
    Fault::ResetAfterHead,
    Fault::ResetInRequestBody,
    Fault::ResetInResponse,
    Fault::Stall,
];

/// How long a stalled connection stays silent (the tests run s3ma with a
/// 2 s read timeout).
const STALL: Duration = Duration::from_secs(5);

pub struct FaultProxy {
    endpoint: String,
    stop: Arc<AtomicBool>,
    /// Connections seen, and faults injected.
    connections: Arc<AtomicU64>,
    faults: Arc<AtomicU64>,
}

/// splitmix64: the fault of connection `n` depends only on the seed and n.
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl FaultProxy {
    /// Forwards to `upstream` (`http://host:port`); `percent` of the
    /// connections get a fault.
    pub fn start(upstream: &str, seed: u64, percent: u64) -> FaultProxy {
        Self::with(upstream, seed, percent, &FAULTS)
    }

    /// Like [`FaultProxy::start`], with the faults drawn from `faults`.
    fn with(upstream: &str, seed: u64, percent: u64, faults: &'static [Fault]) -> FaultProxy {
        let kinds = faults;
        let target = upstream.trim_start_matches("http://").to_string();
        let connections = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(AtomicU64::new(0));
        let (c, f) = (connections.clone(), faults.clone());
        let (endpoint, stop) = listen(move |client| {
            let roll = mix(seed, c.fetch_add(1, Ordering::SeqCst));
            let fault = if roll % 100 < percent {
                f.fetch_add(1, Ordering::SeqCst);
                kinds[((roll >> 8) % kinds.len() as u64) as usize]
            } else {
                Fault::Pass
            };
            serve(client, &target, fault, roll);
        });
        FaultProxy {
            endpoint,
            stop,
            connections,
            faults,
        }
    }

    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    pub fn counts(&self) -> (u64, u64) {
        (
            self.connections.load(Ordering::SeqCst),
            self.faults.load(Ordering::SeqCst),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Serves each connection to a new loopback port on its own thread with
/// `handle`, until the flag it returns is set. Returns the endpoint URL.
fn listen(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            let Ok((client, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let handle = handle.clone();
            std::thread::spawn(move || {
                let _ = client.set_nonblocking(false);
                handle(client);
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), stop)
}

/// Reads up to the end of the request head; returns what was read.
fn read_head(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 << 10 {
            return None;
        }
    }
    Some(head)
}

/// Closes with a TCP reset rather than a clean end.
fn reset(stream: TcpStream) {
    let _ = socket_linger_zero(&stream);
    drop(stream);
}

fn socket_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = [1i32, 0i32]; // l_onoff = 1, l_linger = 0
                               // SAFETY: setsockopt with a valid fd and a correctly sized struct linger.
    let rc = unsafe {
        libc_setsockopt(
            stream.as_raw_fd(),
            1,  // SOL_SOCKET
            13, // SO_LINGER
            linger.as_ptr().cast(),
            std::mem::size_of_val(&linger) as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

extern "C" {
    #[link_name = "setsockopt"]
    fn libc_setsockopt(
        fd: i32,
        level: i32,
        name: i32,
        value: *const std::ffi::c_void,
        len: u32,
    ) -> i32;
}

fn error_response(status: &str, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the test proxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn content_length(head: &[u8]) -> u64 {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn serve(mut client: TcpStream, target: &str, fault: Fault, roll: u64) {
    match fault {
        Fault::Pass => relay(client, target, None),
        Fault::ResetInResponse => relay(client, target, Some(1 + (roll >> 20) % 200)),
        Fault::InternalError | Fault::SlowDown => {
            if read_head(&mut client).is_some() {
                let (status, code) = if fault == Fault::SlowDown {
                    ("503 Slow Down", "SlowDown")
                } else {
                    ("500 Internal Server Error", "InternalError")
                };
                let _ = client.write_all(&error_response(status, code));
                let _ = client.shutdown(Shutdown::Write);
                // Let the client read the answer before the socket goes.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Fault::ResetAfterHead => {
            let _ = read_head(&mut client);
            reset(client);
        }
        Fault::ResetInRequestBody => {
            if let Some(head) = read_head(&mut client) {
                let half = content_length(&head) / 2;
                let _ = std::io::copy(&mut (&client).take(half), &mut std::io::sink());
            }
            reset(client);
        }
        Fault::Stall => {
            let _ = read_head(&mut client);
            std::thread::sleep(STALL);
            reset(client);
        }
    }
}

/// Copies bytes both ways; with `cut`, resets the client after that many
/// bytes of the response.
fn relay(client: TcpStream, target: &str, cut: Option<u64>) {
    let Ok(upstream) = TcpStream::connect(target) else {
        reset(client);
        return;
    };
    relay_open(client, upstream, cut);
}

/// [`relay`] between two open connections.
fn relay_open(client: TcpStream, upstream: TcpStream, cut: Option<u64>) {
    let (mut c_read, mut u_write) = match (client.try_clone(), upstream.try_clone()) {
        (Ok(c), Ok(u)) => (c, u),
        _ => return,
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let mut u_read = upstream;
    let mut c_write = client;
    match cut {
        None => {
            let _ = std::io::copy(&mut u_read, &mut c_write);
            let _ = c_write.shutdown(Shutdown::Write);
        }
        Some(n) => {
            let _ = std::io::copy(&mut (&u_read).take(n), &mut c_write);
            let _ = u_read.shutdown(Shutdown::Both);
            reset(c_write);
        }
    }
    let _ = up.join();
}

const QUICK: [&str; 8] = [
    "--connect-timeout",
    "1",
    "--read-timeout",
    "2",
    "--retries",
    "4",
    "--multipart-chunk-size",
    "5MiB",
];

fn write_tree(env: &TestEnv) {
    for i in 0..120u32 {
        let size = 500 + (i as usize * 5_003) % 30_000;
        env.write(
            &format!("d{}/f{i:03}.bin", i % 5),
            vec![(i % 199) as u8; size],
        );
    }
    let big: Vec<u8> = (0..11_000_000u32).map(|i| (i % 233) as u8).collect();
    env.write("big/one.bin", &big);
}

/// No multipart upload under the bucket is left open (moto lists them;
/// s3s-fs does not implement the listing).
fn assert_no_open_uploads(env: &TestEnv) {
    let open = block_on(
        env.client
            .list_multipart_uploads()
            .bucket(&env.bucket)
            .send(),
    )
    .expect("list multipart uploads");
    assert!(
        open.uploads().is_empty(),
        "multipart uploads left open: {:?}",
        open.uploads()
    );
}

#[test]
fn sync_converges_through_a_fifth_of_connections_failing() {
    for kind in KINDS {
        let seed = 0x0fa1_7000 + kind as u64;
        let env = TestEnv::new(kind);
        write_tree(&env);
        let proxy = FaultProxy::start(&env.endpoint, seed, 20);
        let tree = env.tree().display().to_string();
        let dest = env.dest();
        let mut runs = Vec::new();
        for _ in 0..4 {
            let mut c = env.command();
            c.args([
                "sync",
                &tree,
                &dest,
                "--json",
                "--endpoint",
                &proxy.endpoint(),
            ])
            .args(["--multipart-threshold", "5MiB"])
            .args(QUICK);
            let run = TestEnv::run_cmd(c);
            let done = run.code == 0;
            runs.push(run);
            if done {
                break;
            }
        }
        let log = || {
            runs.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            runs.last().map(|r| r.code),
            Some(0),
            "no clean run in 4 on {kind:?} (seed {seed:#x}, {:?} connections/faults):\n{}",
            proxy.counts(),
            log()
        );
        let (connections, faults) = proxy.counts();
        assert!(
            faults * 10 >= connections,
            "faults were injected: {connections}/{faults}"
        );
        // Checked directly against the server, not through the proxy.
        env.converge(Duration::ZERO, &log);
        env.s3ma(&["verify", &tree, &dest, "--download"]).ok();
        if kind == Kind::Moto {
            assert_no_open_uploads(&env);
        }
    }
}

#[test]
fn watch_converges_through_a_fifth_of_connections_failing() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("before.txt", "there at the start");
    let proxy = FaultProxy::start(&env.endpoint, 0x0fa1_7100, 20);
    let tree = env.tree().display().to_string();
    let dest = env.dest();
    let endpoint = proxy.endpoint();
    let mut args = vec![
        tree.as_str(),
        dest.as_str(),
        "--delete",
        "--endpoint",
        &endpoint,
    ];
    args.extend_from_slice(&QUICK);
    args.extend_from_slice(&["--multipart-threshold", "5MiB"]);
    let mut w = env.watch_args(&args);
    w.ready();
    write_tree(&env);
    std::fs::remove_file(env.tree().join("before.txt")).expect("rm");
    env.write("d1/late.txt", "written after the burst");
    env.converge(Duration::from_secs(120), &|| {
        format!("{:?} connections/faults\n{}", proxy.counts(), w.logs())
    });
    let (connections, faults) = proxy.counts();
    assert!(
        faults * 10 >= connections,
        "faults were injected: {connections}/{faults}"
    );
    assert_eq!(w.term(), 0, "{}", w.logs());
}

/// A server that answers every request with one S3 error.
fn canned(status: &'static str, code: &'static str) -> (String, Arc<AtomicBool>) {
    listen(move |mut client| {
        if read_head(&mut client).is_some()
            && client.write_all(&error_response(status, code)).is_ok()
        {
            let _ = client.shutdown(Shutdown::Write);
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[test]
fn server_refusals_are_named_with_what_to_do() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let tree = env.tree().display().to_string();
    for (status, code, says) in [
        (
            "403 Forbidden",
            "AccessDenied",
            "check the credentials' permissions",
        ),
        ("403 Forbidden", "RequestTimeTooSkewed", "clock is off"),
        (
            "400 Bad Request",
            "AuthorizationHeaderMalformed",
            "wrong region",
        ),
        ("301 Moved Permanently", "PermanentRedirect", "wrong region"),
        (
            "403 Forbidden",
            "SignatureDoesNotMatch",
            "rejected the credentials",
        ),
    ] {
        let (endpoint, stop) = canned(status, code);
        let mut c = env.command();
        c.args(["sync", &tree, &env.dest(), "--endpoint", &endpoint])
            .args(["--retries", "1", "--read-timeout", "5"]);
        let run = TestEnv::run_cmd(c).code(3);
        stop.store(true, Ordering::SeqCst);
        assert!(
            run.stderr.contains(code) && run.stderr.contains(says),
            "{code}: {run}"
        );
        assert!(!run.stderr.contains(SECRET_KEY), "{code}: {run}");
    }
    // A host name that does not resolve.
    let mut c = env.command();
    c.args([
        "sync",
        &tree,
        &env.dest(),
        "--endpoint",
        "http://no-such-host.invalid:9000",
    ])
    .args(["--retries", "1", "--connect-timeout", "5"]);
    let run = TestEnv::run_cmd(c).code(3);
    assert!(run.stderr.contains("does not resolve"), "{run}");
}

/// A proxy that holds every connection for `delay` before relaying it.
fn slow_proxy(upstream: &str, delay: Duration) -> (String, Arc<AtomicBool>) {
    let target = upstream.trim_start_matches("http://").to_string();
    listen(move |client| {
        std::thread::sleep(delay);
        relay(client, &target, None);
    })
}

#[test]
fn a_file_that_vanishes_between_the_walk_and_its_upload_is_noted() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("stays.txt", "stays");
    env.write("goes.txt", "deleted after the walk saw it");
    // The listing (the first request) is held for 2 s: by then the walk
    // has long seen both files, and one of them is gone.
    let (endpoint, stop) = slow_proxy(&env.endpoint, Duration::from_secs(2));
    let tree = env.tree().display().to_string();
    let mut c = env.command();
    c.args([
        "sync",
        &tree,
        &env.dest(),
        "--json",
        "--endpoint",
        &endpoint,
    ]);
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(700));
    std::fs::remove_file(env.tree().join("goes.txt")).expect("rm");
    let out = child.wait_with_output().expect("wait");
    stop.store(true, Ordering::SeqCst);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        stdout.contains("goes.txt") && stdout.contains("disappeared during the sync"),
        "{all}"
    );
    let keys: Vec<String> = env.listing().into_keys().collect();
    assert_eq!(keys, [format!("{}stays.txt", env.prefix)], "{all}");
}

/// Relays every connection, but answers one whose first request is a HEAD
/// with 503 SlowDown (and closes it).
fn heads_fail(upstream: &str) -> (String, Arc<AtomicBool>) {
    let target = upstream.trim_start_matches("http://").to_string();
    listen(move |mut client| {
        let Some(head) = read_head(&mut client) else {
            return;
        };
        if head.starts_with(b"HEAD ") {
            let _ = client.write_all(&error_response("503 Slow Down", "SlowDown"));
            let _ = client.shutdown(Shutdown::Write);
            std::thread::sleep(Duration::from_millis(200));
            return;
        }
        let Ok(mut upstream) = TcpStream::connect(&target) else {
            return;
        };
        if upstream.write_all(&head).is_ok() {
            relay_open(client, upstream, None);
        }
    })
}

#[test]
fn verify_stops_with_exit_3_when_the_server_fails_instead_of_blaming_each_object() {
    // s3s-fs lists no ETags: every comparison needs a HEAD, and they fail
    // (a HEAD answer has no body: the status is all it says).
    let env = TestEnv::new(Kind::S3sFs);
    for i in 0..60 {
        env.write(&format!("v/{i}.txt"), format!("file {i}"));
    }
    env.sync(&[]).ok();
    let (endpoint, stop) = heads_fail(&env.endpoint);
    let tree = env.tree().display().to_string();
    let mut c = env.command();
    c.args(["verify", &tree, &env.dest(), "--endpoint", &endpoint])
        .args(["--retries", "2"]);
    let run = TestEnv::run_cmd(c).code(3);
    stop.store(true, Ordering::SeqCst);
    assert!(
        run.stderr.contains("cannot verify") && run.stderr.contains("503"),
        "{run}"
    );
}

/// Relays one request a connection; while `hold` is set, holds the
/// server's answer to a PUT back (the object is stored; the client does not
/// hear so).
fn answers_to_puts_held(upstream: &str, hold: Arc<AtomicBool>) -> (String, Arc<AtomicBool>) {
    let target = upstream.trim_start_matches("http://").to_string();
    listen(move |mut client| {
        let Some(head) = read_head(&mut client) else {
            return;
        };
        let mut body = vec![0u8; content_length(&head) as usize];
        if client.read_exact(&mut body).is_err() {
            return;
        }
        let Ok(mut upstream) = TcpStream::connect(&target) else {
            return;
        };
        // The server closes after its answer, so the answer is all it
        // sends, however it is framed.
        let mut asked = head[..head.len() - 2].to_vec();
        asked.extend_from_slice(b"connection: close\r\n\r\n");
        if upstream.write_all(&asked).is_err() || upstream.write_all(&body).is_err() {
            return;
        }
        let mut answer = Vec::new();
        let _ = upstream.read_to_end(&mut answer);
        if head.starts_with(b"PUT ") && hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_secs(30));
        }
        let _ = client.write_all(&answer);
        let _ = client.shutdown(Shutdown::Write);
    })
}

#[test]
fn a_kill_before_the_answer_to_an_upload_leaves_no_old_record_to_trust() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        // Every run goes through the proxy (the endpoint is part of what
        // the state database belongs to).
        let hold = Arc::new(AtomicBool::new(false));
        let (endpoint, stop) = answers_to_puts_held(&env.endpoint, hold.clone());
        let tree = env.tree().display().to_string();
        let dest = env.dest();
        let sync = |extra: &[&str]| {
            let mut c = env.command();
            c.args(["sync", &tree, &dest, "--json", "--endpoint", &endpoint])
                .args(extra);
            c
        };
        let path = env.write("page.html", "version A of the page");
        TestEnv::run_cmd(sync(&[])).ok();
        // Same size, other bytes, a newer mtime.
        std::fs::write(&path, "version B of the page").expect("write");
        hold.store(true, Ordering::SeqCst);
        let mut first = sync(&[]);
        first
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = first.spawn().expect("spawn sync");
        // Killed once the server holds version B, its metadata included,
        // before s3ma hears so.
        let key = format!("{}page.html", env.prefix);
        let b_md5 = md5_b64(b"version B of the page");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while env.head(&key).1.get("md5chksum") != Some(&b_md5) {
            assert!(
                std::time::Instant::now() < deadline,
                "the upload never landed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        // The next run asks the server instead of trusting the record of
        // version A, and sends nothing (a PUT would wait 30 s for its
        // answer, then show in the output).
        let run = TestEnv::run_cmd(sync(&["-v"])).ok();
        stop.store(true, Ordering::SeqCst);
        assert!(run.actions("upload").is_empty(), "sent again: {run}");
        env.assert_mirrors(&["page.html"]);
    }
}

/// `-vv` lines of the requests in flight changing, as (from, to, why).
fn pace_changes(run: &Run) -> Vec<(usize, usize, String)> {
    run.stderr
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("requests in flight ")?;
            let (from, rest) = rest.split_once(" -> ")?;
            let (to, why) = rest.split_once(": ")?;
            Some((from.parse().ok()?, to.parse().ok()?, why.to_string()))
        })
        .collect()
}

#[test]
fn slow_down_answers_halve_the_requests_in_flight_and_the_sync_converges() {
    for kind in KINDS {
        let seed = 0x5100_d000 + kind as u64;
        let env = TestEnv::new(kind);
        for i in 0..300 {
            env.write(&format!("f{i:03}.txt"), vec![b'x'; 4096]);
        }
        let proxy = FaultProxy::with(&env.endpoint, seed, 30, &[Fault::SlowDown]);
        let tree = env.tree().display().to_string();
        let dest = env.dest();
        let run_with = |extra: &[&str]| {
            let mut c = env.command();
            c.args(["sync", &tree, &dest, "--json", "-vv", "--endpoint"])
                .arg(proxy.endpoint())
                // Long enough for the governor to look, whatever the
                // machine's speed: 1.2 MB at 400 KB/s.
                .args(["--bwlimit", "400K"])
                .args(extra);
            TestEnv::run_cmd(c)
        };
        let mut runs = vec![run_with(&[])];
        while runs.last().is_some_and(|r| r.code != 0) && runs.len() < 4 {
            runs.push(run_with(&[]));
        }
        let log = || {
            runs.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(runs.last().map(|r| r.code), Some(0), "{kind:?}: {}", log());
        let changes = pace_changes(&runs[0]);
        let slowed: Vec<_> = changes
            .iter()
            .filter(|c| c.2 == "the server asked to slow down")
            .collect();
        assert!(
            !slowed.is_empty(),
            "{kind:?}: no slow-down in {changes:?}\n{}",
            log()
        );
        for (from, to, _) in slowed {
            assert_eq!(*to, (from / 2).max(4), "{kind:?}: {changes:?}");
        }
        env.converge(Duration::ZERO, &log);
        // A fixed --concurrency stays as given (through as long a run).
        for i in 0..300 {
            env.write(&format!("f{i:03}.txt"), vec![b'y'; 4096]);
        }
        let fixed = run_with(&["--concurrency", "8"]);
        assert!(pace_changes(&fixed).is_empty(), "{kind:?}: {fixed}");
    }
}
