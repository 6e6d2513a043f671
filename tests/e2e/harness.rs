//! Test harness: starts real S3-compatible servers (s3s-fs and moto's
//! server) once per test binary on free ports, gives each test its own
//! bucket, local tree and state directory, runs the real `s3ma` binary, and
//! inspects the bucket with an independent aws-sdk-s3 client.
//!
//! Servers are started through `sh`, which kills them when this process's
//! end of a pipe closes, so no server outlives the test run.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::Client;

pub const ACCESS_KEY: &str = "s3ma-test-key";
pub const SECRET_KEY: &str = "s3ma-test-secret-Zq9vW2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3sFs,
    Moto,
}

pub const KINDS: [Kind; 2] = [Kind::S3sFs, Kind::Moto];

pub struct Server {
    pub endpoint: String,
    _child: Child,
    _keepalive: ChildStdin,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn find_tool(env_var: &str, name: &str, extra: &[PathBuf]) -> PathBuf {
    if let Ok(p) = std::env::var(env_var) {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = extra.to_vec();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin").join(name));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
            "{name} not found: run ./scripts/setup-test-env.sh (or set {env_var}) before the tests"
        )
        })
}

fn moto_bin() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/venv/bin/moto_server");
    find_tool("MOTO_SERVER_BIN", "moto_server", &[venv])
}

fn start(kind: Kind) -> Server {
    let port = free_port();
    let root = std::env::temp_dir().join(format!("s3ma-test-{}-{port}", std::process::id()));
    let argv: Vec<String> = match kind {
        Kind::S3sFs => {
            std::fs::create_dir_all(&root).expect("server root");
            let bin = find_tool("S3S_FS_BIN", "s3s-fs", &[]);
            vec![
                bin.display().to_string(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--access-key".into(),
                ACCESS_KEY.into(),
                "--secret-key".into(),
                SECRET_KEY.into(),
                root.display().to_string(),
            ]
        }
        Kind::Moto => {
            vec![
                moto_bin().display().to_string(),
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ]
        }
    };
    launch(&format!("{kind:?}"), port, argv, "http")
}

/// Runs `argv` through `sh`, which kills it when our end of its stdin
/// closes, and waits until `port` accepts connections.
fn launch(name: &str, port: u16, argv: Vec<String>, scheme: &str) -> Server {
    let log = std::env::temp_dir().join(format!("s3ma-test-{name}-{port}.log"));
    let script = r#""$@" >"$S3MA_SERVER_LOG" 2>&1 </dev/null & pid=$!; read _; kill $pid 2>/dev/null; wait $pid"#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(argv)
        .env("S3MA_SERVER_LOG", &log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let keepalive = child.stdin.take().expect("stdin");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{name} did not start on port {port}; its log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        endpoint: format!("{scheme}://127.0.0.1:{port}"),
        _child: child,
        _keepalive: keepalive,
    }
}

/// A moto server speaking TLS with the given certificate, for this test
/// alone (stopped when the returned value is dropped).
pub fn start_tls_moto(cert: &Path, key: &Path) -> Server {
    let port = free_port();
    let argv = vec![
        moto_bin().display().to_string(),
        "-H".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-c".into(),
        cert.display().to_string(),
        "-k".into(),
        key.display().to_string(),
    ];
    launch("moto-tls", port, argv, "https")
}

fn server(kind: Kind) -> &'static Server {
    static S3S: OnceLock<Server> = OnceLock::new();
    static MOTO: OnceLock<Server> = OnceLock::new();
    match kind {
        Kind::S3sFs => S3S.get_or_init(|| start(Kind::S3sFs)),
        Kind::Moto => MOTO.get_or_init(|| start(Kind::Moto)),
    }
}

pub fn endpoint(kind: Kind) -> String {
    server(kind).endpoint.clone()
}

/// An independent S3 client for checking what the bucket holds.
pub fn client(kind: Kind) -> Client {
    client_for(&endpoint(kind))
}

pub fn client_for(endpoint: &str) -> Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    Client::from_conf(conf)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "s3ma failed:\n{self}");
        self
    }
    pub fn code(self, want: i32) -> Run {
        assert_eq!(self.code, want, "unexpected exit code:\n{self}");
        self
    }
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    /// The `--json` summary object.
    pub fn summary(&self) -> serde_json::Value {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["action"] == "summary")
            .unwrap_or_else(|| panic!("no JSON summary in:\n{self}"))
    }
    pub fn actions(&self, action: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["action"] == action)
            .map(|v| v["key"].as_str().unwrap_or_default().to_string())
            .collect();
        keys.sort();
        keys
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// One test's world: a bucket on one server, a local tree, a state dir.
pub struct TestEnv {
    pub kind: Kind,
    pub bucket: String,
    pub prefix: String,
    pub endpoint: String,
    pub client: Client,
    tmp: tempfile::TempDir,
}

/// An s3s-fs server for one test, which it may stop and start again (same
/// port, same data).
pub struct OwnServer {
    pub port: u16,
    root: PathBuf,
    server: Option<Server>,
}

impl OwnServer {
    pub fn start() -> OwnServer {
        let port = free_port();
        let root = std::env::temp_dir().join(format!("s3ma-own-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&root).expect("server root");
        let mut s = OwnServer {
            port,
            root,
            server: None,
        };
        s.up();
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn up(&mut self) {
        let bin = find_tool("S3S_FS_BIN", "s3s-fs", &[]);
        let argv = vec![
            bin.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            self.port.to_string(),
            "--access-key".into(),
            ACCESS_KEY.into(),
            "--secret-key".into(),
            SECRET_KEY.into(),
            self.root.display().to_string(),
        ];
        self.server = Some(launch("s3s-fs-own", self.port, argv, "http"));
    }

    /// Stops the server and waits until its port refuses connections.
    pub fn down(&mut self) {
        self.server = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.server = None;
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl TestEnv {
    pub fn new(kind: Kind) -> TestEnv {
        Self::on(kind, &endpoint(kind))
    }

    /// A test world on a server at `endpoint` (of the given kind).
    pub fn on(kind: Kind, endpoint: &str) -> TestEnv {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let bucket = format!("t{}-{n}-{}", std::process::id(), kind_tag(kind));
        let client = client_for(endpoint);
        block_on(client.create_bucket().bucket(&bucket).send())
            .unwrap_or_else(|e| panic!("create bucket {bucket} on {kind:?}: {e:?}"));
        let tmp = tempfile::tempdir().expect("tempdir");
        for d in ["tree", "state", "work"] {
            std::fs::create_dir_all(tmp.path().join(d)).expect("mkdir");
        }
        TestEnv {
            kind,
            bucket,
            prefix: "site/".into(),
            endpoint: endpoint.to_string(),
            client,
            tmp,
        }
    }

    /// The mirrored directory.
    pub fn tree(&self) -> PathBuf {
        self.tmp.path().join("tree")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }
    /// The working directory the binary runs in (no conf/ there).
    pub fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }
    pub fn dest(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// Writes a file under the tree, creating directories.
    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.tree().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("write");
        p
    }

    /// A command for the binary, isolated from the user's AWS setup.
    pub fn command(&self) -> Command {
        self.command_for(env!("CARGO_BIN_EXE_s3ma"))
    }

    /// Another program run in the same isolated environment.
    pub fn command_for(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.work())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("S3MA_STATE_DIR", self.state_dir())
            .stdin(Stdio::null());
        c
    }

    /// A command for the binary run as an unprivileged user when the
    /// tests run as root (root reads everything, so unreadable files need
    /// another user); the tree and the state directory are made theirs to
    /// use.
    pub fn unprivileged(&self) -> Command {
        use std::os::unix::fs::PermissionsExt;
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if uid != "0" {
            return self.command();
        }
        let base = self.tree().parent().expect("tmp").to_path_buf();
        for d in [base, self.tree(), self.work()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        for entry in walkdir::WalkDir::new(self.state_dir()) {
            let entry = entry.expect("walk state dir");
            std::os::unix::fs::chown(entry.path(), Some(65534), Some(65534)).expect("chown");
        }
        let mut c = self.command_for("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_s3ma"),
        ]);
        c
    }

    pub fn run_cmd(mut cmd: Command) -> Run {
        let out = cmd.output().expect("run s3ma");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `s3ma ARGS… --endpoint URL`.
    pub fn s3ma(&self, args: &[&str]) -> Run {
        let mut c = self.command();
        c.args(args).arg("--endpoint").arg(&self.endpoint);
        Self::run_cmd(c)
    }

    /// `s3ma sync TREE s3://bucket/site/ --json EXTRA…`.
    pub fn sync(&self, extra: &[&str]) -> Run {
        let tree = self.tree().display().to_string();
        let dest = self.dest();
        let mut args = vec!["sync", tree.as_str(), dest.as_str(), "--json"];
        args.extend_from_slice(extra);
        self.s3ma(&args)
    }

    /// Every key in the bucket with its bytes.
    pub fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        self.primary().objects()
    }

    /// Every key in the bucket with its size.
    pub fn listing(&self) -> BTreeMap<String, u64> {
        self.primary().listing()
    }

    /// The test's own bucket and prefix, as a [`Bucket`].
    pub fn primary(&self) -> Bucket {
        Bucket {
            kind: self.kind,
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            client: self.client.clone(),
        }
    }

    /// A further, new bucket on the server at `endpoint` (of `kind`), seen
    /// under `prefix`.
    pub fn second(&self, kind: Kind, endpoint: &str, prefix: &str) -> Bucket {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let bucket = format!("u{}-{n}-{}", std::process::id(), kind_tag(kind));
        let client = client_for(endpoint);
        block_on(client.create_bucket().bucket(&bucket).send())
            .unwrap_or_else(|e| panic!("create bucket {bucket} on {kind:?}: {e:?}"));
        Bucket {
            kind,
            endpoint: endpoint.to_string(),
            bucket,
            prefix: prefix.to_string(),
            client,
        }
    }

    /// What the bucket should hold: each mirrored file of the tree (hidden
    /// names and editors' temp files left out) as key and size.
    pub fn expected(&self) -> BTreeMap<String, u64> {
        self.expected_under(&self.prefix)
    }

    /// [`TestEnv::expected`] with another key prefix.
    pub fn expected_under(&self, prefix: &str) -> BTreeMap<String, u64> {
        expected_in(&self.tree(), prefix)
    }

    /// Polls until the bucket holds exactly the tree's files, bytes
    /// included; panics with the difference (and `context`) at the
    /// deadline.
    pub fn converge(&self, within: Duration, context: &dyn Fn() -> String) -> Duration {
        self.converge_on(&self.primary(), within, context)
    }

    /// Like [`TestEnv::converge`], for the tree mirrored in bucket `b`.
    pub fn converge_on(
        &self,
        b: &Bucket,
        within: Duration,
        context: &dyn Fn() -> String,
    ) -> Duration {
        converge_tree(&self.tree(), b, within, context)
    }
}

/// What a bucket mirroring `tree` under `prefix` should hold: each mirrored
/// file (hidden names and editors' backup files left out) as key and size.
pub fn expected_in(tree: &Path, prefix: &str) -> BTreeMap<String, u64> {
    let tree = tree.to_path_buf();
    walkdir::WalkDir::new(&tree)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter(|e| !e.file_name().to_string_lossy().ends_with('~'))
        .filter_map(|e| {
            let rel = e.path().strip_prefix(&tree).ok()?.to_str()?.to_string();
            let size = e.metadata().ok()?.len();
            Some((format!("{prefix}{rel}"), size))
        })
        .collect()
}

/// Polls until bucket `b` holds exactly the files of `tree`, bytes
/// included; panics with the difference (and `context`) at the deadline.
pub fn converge_tree(
    tree: &Path,
    b: &Bucket,
    within: Duration,
    context: &dyn Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        let want = expected_in(tree, &b.prefix);
        let got = b.listing();
        if want == got {
            let objects = b.objects();
            let same = want.keys().all(|k| {
                let rel = &k[b.prefix.len()..];
                std::fs::read(tree.join(rel)).ok().as_ref() == objects.get(k)
            });
            if same {
                return start.elapsed();
            }
        }
        if start.elapsed() > within {
            let missing: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .take(20)
                .collect();
            let extra: Vec<_> = got
                .iter()
                .filter(|(k, v)| want.get(*k) != Some(v))
                .take(20)
                .collect();
            panic!(
                "{} did not converge within {within:?} on {:?}\nwanted but not there \
                 (or other size): {missing:?}\nthere but not wanted: {extra:?}\n{}",
                b.url(),
                b.kind,
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl TestEnv {
    /// Starts `s3ma watch TREE DEST --json --debounce 100 EXTRA…`.
    pub fn watch(&self, extra: &[&str]) -> Daemon {
        self.watch_dir(&self.tree(), extra)
    }

    /// Starts `s3ma watch DIR DEST --json --debounce 100 EXTRA…`.
    pub fn watch_dir(&self, dir: &Path, extra: &[&str]) -> Daemon {
        let dir = dir.display().to_string();
        let dest = self.dest();
        let mut args = vec![dir.as_str(), dest.as_str(), "--endpoint", &self.endpoint];
        args.extend_from_slice(extra);
        self.watch_args(&args)
    }

    /// Starts `s3ma watch ARGS… --json --debounce 100`.
    pub fn watch_args(&self, args: &[&str]) -> Daemon {
        self.watch_as(self.command(), args)
    }

    /// Like [`TestEnv::watch_args`], with the command `c` (another user's).
    pub fn watch_as(&self, mut c: Command, args: &[&str]) -> Daemon {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let out = self.tmp.path().join(format!("watch-{n}.out"));
        let err = self.tmp.path().join(format!("watch-{n}.err"));
        c.arg("watch")
            .args(args)
            .arg("--json")
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        if !args.contains(&"--debounce") {
            c.args(["--debounce", "100"]);
        }
        let child = c.spawn().expect("start s3ma watch");
        Daemon {
            child: Some(child),
            out,
            err,
        }
    }

    pub fn keys(&self) -> Vec<String> {
        self.listing().into_keys().collect()
    }

    /// Content-Type, user metadata and ETag of one object.
    pub fn head(&self, key: &str) -> (String, HashMap<String, String>, Option<String>) {
        self.primary().head(key)
    }

    /// Puts an object directly (not through s3ma).
    pub fn put(&self, key: &str, data: &[u8]) {
        block_on(
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(data.to_vec().into())
                .send(),
        )
        .expect("put");
    }

    /// Asserts each object's md5chksum is the MD5 of its file under
    /// `root` (a copy that read the wrong version would carry its source's
    /// metadata with other bytes, or the other way round).
    pub fn assert_md5chksum(&self, root: &Path, context: &dyn Fn() -> String) {
        for key in self.keys() {
            let rel = &key[self.prefix.len()..];
            let data = std::fs::read(root.join(rel)).expect("local file");
            let (_, meta, _) = self.head(&key);
            assert_eq!(
                meta.get("md5chksum").map(String::as_str),
                Some(md5_b64(&data).as_str()),
                "md5chksum of {key}\n{}",
                context()
            );
        }
    }

    /// Asserts the bucket holds exactly these keys (under any prefix) with
    /// the bytes of the local files named by the part after the prefix.
    pub fn assert_mirrors(&self, rels: &[&str]) {
        let objects = self.objects();
        let want: Vec<String> = rels.iter().map(|r| format!("{}{r}", self.prefix)).collect();
        let got: Vec<&String> = objects.keys().collect();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(
            got,
            want_sorted.iter().collect::<Vec<_>>(),
            "keys on {:?}",
            self.kind
        );
        for (rel, key) in rels.iter().zip(&want) {
            let local = std::fs::read(self.tree().join(rel)).expect("read local");
            assert!(objects[key] == local, "bytes of {key} on {:?}", self.kind);
        }
    }
}

/// A bucket and prefix that mirrors the test's tree (the primary, or a
/// further destination).
pub struct Bucket {
    pub kind: Kind,
    pub endpoint: String,
    pub bucket: String,
    pub prefix: String,
    pub client: Client,
}

impl Bucket {
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// Content-Type, user metadata and ETag of one object.
    pub fn head(&self, key: &str) -> (String, HashMap<String, String>, Option<String>) {
        block_on(async {
            let h = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("head {key}: {e:?}"));
            (
                h.content_type().unwrap_or_default().to_string(),
                h.metadata().cloned().unwrap_or_default(),
                h.e_tag().map(|e| e.trim_matches('"').to_string()),
            )
        })
    }

    /// Everything a HEAD of `key` answers.
    pub fn head_all(&self, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
        block_on(
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send(),
        )
        .unwrap_or_else(|e| panic!("head {key}: {e:?}"))
    }

    /// Every key in the bucket with its bytes.
    pub fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        let keys = self.listing().into_keys().collect::<Vec<_>>();
        block_on(async {
            let mut out = BTreeMap::new();
            for chunk in keys.chunks(16) {
                let mut set = tokio::task::JoinSet::new();
                for key in chunk {
                    let (client, bucket, key) =
                        (self.client.clone(), self.bucket.clone(), key.clone());
                    set.spawn(async move {
                        let body = client
                            .get_object()
                            .bucket(&bucket)
                            .key(&key)
                            .send()
                            .await
                            .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
                            .body
                            .collect()
                            .await
                            .expect("body")
                            .into_bytes()
                            .to_vec();
                        (key, body)
                    });
                }
                while let Some(res) = set.join_next().await {
                    let (key, body) = res.expect("get task");
                    out.insert(key, body);
                }
            }
            out
        })
    }

    /// Every key in the bucket with its size.
    pub fn listing(&self) -> BTreeMap<String, u64> {
        block_on(async {
            let mut out = BTreeMap::new();
            let mut token = None;
            loop {
                let resp = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .set_continuation_token(token)
                    .send()
                    .await?;
                for o in resp.contents() {
                    if let Some(k) = o.key() {
                        out.insert(k.to_string(), o.size().unwrap_or(0) as u64);
                    }
                }
                match resp.next_continuation_token() {
                    Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            Ok::<_, aws_sdk_s3::Error>(out)
        })
        .unwrap_or_else(|e| panic!("list {}: {e:?}", self.bucket))
    }
}

fn kind_tag(kind: Kind) -> &'static str {
    match kind {
        Kind::S3sFs => "s3s",
        Kind::Moto => "moto",
    }
}

/// Serialises tests that need a process-wide resource.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs openssl in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sets a file's mtime to `secs` seconds after the epoch.
pub fn set_mtime(path: &Path, secs: u64) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open for mtime");
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        .expect("set mtime");
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(data))
}

pub fn md5_b64(data: &[u8]) -> String {
    use base64::Engine as _;
    use md5::{Digest, Md5};
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(data))
}

pub fn write_file(path: &Path, data: &str) {
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(data.as_bytes()).expect("write");
}

/// A small deterministic generator (xorshift), so a failing run can be
/// replayed from the seed in its message.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A running `s3ma watch`; killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Daemon {
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
    pub fn logs(&self) -> String {
        format!(
            "--- watch stdout\n{}--- watch stderr\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// The JSON lines with this action.
    pub fn actions(&self, action: &str) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["action"] == action)
            .collect()
    }

    /// Keys of the lines with this action.
    pub fn keys(&self, action: &str) -> Vec<String> {
        let mut k: Vec<String> = self
            .actions(action)
            .iter()
            .map(|v| v["key"].as_str().unwrap_or_default().to_string())
            .collect();
        k.sort();
        k
    }

    /// The daemon said it is idle after everything else it said (it says
    /// so at `-v`).
    pub fn idle(&self) -> bool {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .next_back()
            .is_some_and(|v| v["action"] == "idle")
    }

    /// Waits for the "ready" line (the initial reconcile is done).
    pub fn ready(&mut self) -> &mut Self {
        self.wait_for("ready", Duration::from_secs(60));
        self
    }

    /// Waits until a JSON line with this action appears.
    pub fn wait_for(&mut self, action: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = self.actions(action).pop() {
                return v;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "s3ma watch exited ({status}) before '{action}':\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no '{action}' line within {within:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -s {sig} {}", self.pid()))
            .status()
            .expect("kill");
        assert!(status.success(), "kill -s {sig}");
    }

    /// SIGTERM, then the exit code (panics if it takes over 60 s).
    pub fn term(&mut self) -> i32 {
        self.signal("TERM");
        self.exit_code()
    }

    /// Waits for the exit (panics if it takes over 60 s) and returns its
    /// code.
    pub fn exit_code(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("s3ma watch did not exit after SIGTERM:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
