//! A seeded, randomized model test of `s3ma watch`: a few hundred random
//! operations on a Capistrano-style web root (`app/current` a symbolic
//! link to `app/releases/rN`) — creates, appends, same-size rewrites,
//! renames of files and directories (swaps and cycles included), deletes,
//! `mkdir`, `rm -rf`, moves in and out of the tree, switches of the link to
//! a new release, a daemon killed with SIGKILL and restarted, the server
//! stopped and started — with `--rescan-interval 0`, so only events count.
//! After quiescence the bucket must equal the tree: the same keys, the same
//! bytes, and each object's `md5chksum` that of its file.
//!
//! A failure prints the seed and the operations. `S3MA_MODEL_SEEDS=N`
//! runs N seeds per server kind (default 3), `S3MA_MODEL_OPS` the
//! operations per seed (default 200), `S3MA_MODEL_SEED` one given seed:
//! `scripts/soak.sh` runs many.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;

const SETTLE: Duration = Duration::from_secs(180);

struct World {
    rng: Rng,
    app: PathBuf,
    outside: PathBuf,
    release: u32,
    next: u32,
    log: Vec<String>,
}

impl World {
    fn current(&self) -> PathBuf {
        self.app.join("current")
    }

    fn root(&self) -> PathBuf {
        self.app.join("releases").join(format!("r{}", self.release))
    }

    fn fresh(&mut self, stem: &str) -> String {
        self.next += 1;
        format!("{stem}{}", self.next)
    }

    /// Files and directories of the current release, relative to it.
    fn entries(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let root = self.root();
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        for e in walkdir::WalkDir::new(&root)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .filter_map(Result::ok)
        {
            let rel = e
                .path()
                .strip_prefix(&root)
                .expect("under the root")
                .to_path_buf();
            if e.file_type().is_dir() {
                dirs.push(rel);
            } else {
                files.push(rel);
            }
        }
        (files, dirs)
    }

    /// A directory to put something in: the root or an existing one.
    fn some_dir(&mut self, dirs: &[PathBuf]) -> PathBuf {
        if dirs.is_empty() || self.rng.below(3) == 0 {
            PathBuf::new()
        } else {
            self.rng.pick(dirs).clone()
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let seed = self.rng.below(u64::MAX);
        let mut r = Rng(seed | 1);
        (0..len).map(|_| r.below(256) as u8).collect()
    }

    fn size(&mut self) -> usize {
        match self.rng.below(20) {
            0 => 0,
            1 => 300_000 + self.rng.below(50_000) as usize,
            _ => self.rng.below(4096) as usize,
        }
    }

    fn note(&mut self, op: String) {
        self.log.push(op);
    }

    fn path(&self, rel: &Path) -> PathBuf {
        self.root().join(rel)
    }

    /// One random operation on the tree; returns what else to do.
    fn step(&mut self, may_switch: bool) -> Extra {
        let (files, dirs) = self.entries();
        let roll = self.rng.below(100);
        match roll {
            0..=19 => {
                let dir = self.some_dir(&dirs);
                let name = dir.join(self.fresh("f"));
                let len = self.size();
                let data = self.bytes(len);
                std::fs::write(self.path(&name), data).expect("create");
                self.note(format!("create {} ({len} B)", name.display()));
            }
            20..=29 if !files.is_empty() => {
                let f = self.rng.pick(&files).clone();
                let len = 1 + self.rng.below(2000) as usize;
                let data = self.bytes(len);
                use std::io::Write as _;
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(self.path(&f))
                    .expect("open");
                file.write_all(&data).expect("append");
                self.note(format!("append {len} B to {}", f.display()));
            }
            30..=37 if !files.is_empty() => {
                let f = self.rng.pick(&files).clone();
                let len = std::fs::metadata(self.path(&f)).expect("stat").len() as usize;
                let data = self.bytes(len);
                std::fs::write(self.path(&f), data).expect("rewrite");
                self.note(format!("rewrite {} (same size)", f.display()));
            }
            38..=49 if !files.is_empty() => {
                let f = self.rng.pick(&files).clone();
                let dir = self.some_dir(&dirs);
                let to = dir.join(self.fresh("f"));
                std::fs::rename(self.path(&f), self.path(&to)).expect("rename");
                self.note(format!("mv {} {}", f.display(), to.display()));
            }
            50..=54 if files.len() >= 2 => {
                let a = self.rng.pick(&files).clone();
                let b = self.rng.pick(&files).clone();
                if a != b {
                    let t = a.with_file_name(self.fresh("f"));
                    std::fs::rename(self.path(&a), self.path(&t)).expect("mv a t");
                    std::fs::rename(self.path(&b), self.path(&a)).expect("mv b a");
                    std::fs::rename(self.path(&t), self.path(&b)).expect("mv t b");
                    self.note(format!("swap {} {}", a.display(), b.display()));
                }
            }
            55..=58 if files.len() >= 3 => {
                let a = self.rng.pick(&files).clone();
                let b = self.rng.pick(&files).clone();
                let c = self.rng.pick(&files).clone();
                if a != b && b != c && a != c {
                    // a -> b -> c -> a, through a temporary name.
                    let t = a.with_file_name(self.fresh("f"));
                    std::fs::rename(self.path(&c), self.path(&t)).expect("mv c t");
                    std::fs::rename(self.path(&b), self.path(&c)).expect("mv b c");
                    std::fs::rename(self.path(&a), self.path(&b)).expect("mv a b");
                    std::fs::rename(self.path(&t), self.path(&a)).expect("mv t a");
                    self.note(format!(
                        "cycle {} {} {}",
                        a.display(),
                        b.display(),
                        c.display()
                    ));
                }
            }
            59..=64 if !dirs.is_empty() => {
                let d = self.rng.pick(&dirs).clone();
                let into = self.some_dir(&dirs);
                if !into.starts_with(&d) {
                    let to = into.join(self.fresh("d"));
                    std::fs::rename(self.path(&d), self.path(&to)).expect("mv dir");
                    self.note(format!("mv {}/ {}/", d.display(), to.display()));
                }
            }
            65..=67 if dirs.len() >= 2 => {
                let a = self.rng.pick(&dirs).clone();
                let b = self.rng.pick(&dirs).clone();
                if !a.starts_with(&b) && !b.starts_with(&a) {
                    let t = a.with_file_name(self.fresh("d"));
                    std::fs::rename(self.path(&a), self.path(&t)).expect("mv a t");
                    std::fs::rename(self.path(&b), self.path(&a)).expect("mv b a");
                    std::fs::rename(self.path(&t), self.path(&b)).expect("mv t b");
                    self.note(format!("swap {}/ {}/", a.display(), b.display()));
                }
            }
            68..=76 if !files.is_empty() => {
                let f = self.rng.pick(&files).clone();
                std::fs::remove_file(self.path(&f)).expect("rm");
                self.note(format!("rm {}", f.display()));
            }
            77..=81 => {
                let dir = self.some_dir(&dirs);
                let d = dir.join(self.fresh("d"));
                std::fs::create_dir(self.path(&d)).expect("mkdir");
                let n = self.rng.below(4);
                for _ in 0..n {
                    let f = d.join(self.fresh("f"));
                    let len = self.size();
                    let data = self.bytes(len);
                    std::fs::write(self.path(&f), data).expect("create");
                }
                self.note(format!("mkdir {} with {n} files", d.display()));
            }
            82..=85 if !dirs.is_empty() => {
                let d = self.rng.pick(&dirs).clone();
                std::fs::remove_dir_all(self.path(&d)).expect("rm -rf");
                self.note(format!("rm -rf {}", d.display()));
            }
            86..=88 if !files.is_empty() || !dirs.is_empty() => {
                let what = if !dirs.is_empty() && (files.is_empty() || self.rng.below(2) == 0) {
                    self.rng.pick(&dirs).clone()
                } else {
                    self.rng.pick(&files).clone()
                };
                let name = self.fresh("out");
                let out = self.outside.join(name);
                std::fs::rename(self.path(&what), &out).expect("move out");
                self.note(format!("move out {}", what.display()));
            }
            89..=91 => {
                // Made outside, then moved in whole.
                let name = self.fresh("in");
                let staged = self.outside.join(name);
                let is_dir = self.rng.below(2) == 0;
                if is_dir {
                    std::fs::create_dir_all(staged.join("sub")).expect("mkdir");
                    for i in 0..1 + self.rng.below(3) {
                        let len = self.size();
                        let data = self.bytes(len);
                        std::fs::write(staged.join(format!("sub/f{i}")), data).expect("write");
                    }
                } else {
                    let len = self.size();
                    let data = self.bytes(len);
                    std::fs::write(&staged, data).expect("write");
                }
                let dir = self.some_dir(&dirs);
                let to = dir.join(self.fresh(if is_dir { "d" } else { "f" }));
                std::fs::rename(&staged, self.path(&to)).expect("move in");
                self.note(format!("move in {}", to.display()));
            }
            92..=93 if may_switch => {
                self.switch();
            }
            94 => return Extra::KillDaemon,
            95 => return Extra::RestartServer,
            _ => {
                let ms = self.rng.below(30);
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        Extra::None
    }

    /// A deploy: a copy of the release with a change, then the link
    /// switched atomically; now and then the release before last goes.
    fn switch(&mut self) {
        let from = self.root();
        let next = self.release + 1;
        let to = self.app.join("releases").join(format!("r{next}"));
        copy_tree(&from, &to);
        let changed = to.join(self.fresh("f"));
        let data = self.bytes(100);
        std::fs::write(&changed, data).expect("write");
        let tmp = self.app.join("current.tmp");
        std::os::unix::fs::symlink(format!("releases/r{next}"), &tmp).expect("symlink");
        std::fs::rename(&tmp, self.current()).expect("switch");
        self.release = next;
        let mut note = format!("deploy r{next}");
        if next >= 2 && self.rng.below(2) == 0 {
            let old = self.app.join("releases").join(format!("r{}", next - 2));
            if old.exists() {
                std::fs::remove_dir_all(&old).expect("rm old release");
                note.push_str(&format!(", rm releases/r{}", next - 2));
            }
        }
        self.note(note);
    }
}

enum Extra {
    None,
    KillDaemon,
    RestartServer,
}

fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from)
        .into_iter()
        .filter_map(Result::ok)
    {
        let rel = e.path().strip_prefix(from).expect("under");
        let dest = to.join(rel);
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).expect("mkdir");
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// Waits until the daemon has said it is idle after everything else it
/// said, and the bucket holds the tree: then nothing more will happen.
fn quiesce(env: &TestEnv, w: &Daemon, tree: &Path, context: &dyn Fn() -> String) {
    let deadline = Instant::now() + SETTLE;
    loop {
        converge_tree(tree, &env.primary(), SETTLE, context);
        if w.idle() {
            // Still equal now that it is idle.
            converge_tree(tree, &env.primary(), Duration::ZERO, context);
            return;
        }
        if Instant::now() > deadline {
            w.signal("TERM");
            let stopped = (0..600).find_map(|_| {
                std::thread::sleep(Duration::from_millis(100));
                w.actions("stopped").pop()
            });
            panic!(
                "the daemon did not go idle; stopped with {stopped:?}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seeds(kind: Kind) -> Vec<u64> {
    if let Some(seed) = std::env::var("S3MA_MODEL_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    {
        return vec![seed];
    }
    let base = match kind {
        Kind::S3sFs => 0x5eed_0001_u64,
        Kind::Moto => 0x5eed_1001_u64,
    };
    (0..env_number("S3MA_MODEL_SEEDS", 3))
        .map(|i| base + i)
        .collect()
}

fn run_seed(kind: Kind, seed: u64) {
    let mut server = (kind == Kind::S3sFs).then(OwnServer::start);
    let env = match &server {
        Some(s) => TestEnv::on(kind, &s.endpoint()),
        None => TestEnv::new(kind),
    };
    let app = env.work().join("app");
    let mut world = World {
        rng: Rng(seed),
        app: app.clone(),
        outside: env.work().join("outside"),
        release: 1,
        next: 0,
        log: Vec::new(),
    };
    std::fs::create_dir_all(world.root()).expect("mkdir");
    std::fs::create_dir_all(&world.outside).expect("mkdir");
    std::os::unix::fs::symlink("releases/r1", world.current()).expect("symlink");
    for _ in 0..20 {
        world.step(false);
    }
    let current = world.current();
    let args = [
        "--delete",
        "--rescan-interval",
        "0",
        "-vv",
        "--connect-timeout",
        "2",
        "--read-timeout",
        "10",
        "--retries",
        "2",
    ];
    let mut w = env.watch_dir(&current, &args);
    w.ready();
    let ops = env_number("S3MA_MODEL_OPS", 200);
    let mut earlier = String::new();
    for _ in 0..ops {
        match world.step(true) {
            Extra::None => {}
            Extra::KillDaemon => {
                w.kill();
                earlier.push_str(&w.logs());
                world.note("SIGKILL the daemon, start it again".into());
                w = env.watch_dir(&current, &args);
                w.ready();
            }
            Extra::RestartServer => {
                if let Some(s) = server.as_mut() {
                    world.note("server down".into());
                    s.down();
                    for _ in 0..1 + world.rng.below(5) {
                        world.step(false);
                    }
                    s.up();
                    world.note("server up".into());
                }
            }
        }
    }
    let tree = world.current();
    let context = || {
        format!(
            "seed {seed:#x} on {kind:?} (replay: S3MA_MODEL_SEED={seed:x}), operations:\n  {}\n{}{}",
            world.log.join("\n  "),
            earlier,
            w.logs()
        )
    };
    quiesce(&env, &w, &tree, &context);
    env.assert_md5chksum(&tree, &context);
    eprintln!(
        "model seed {seed:#x} on {kind:?}: {} operations, {} objects, converged",
        world.log.len(),
        env.keys().len()
    );
    let code = w.term();
    assert_eq!(code, 0, "seed {seed:#x}: {}", w.logs());
}

#[test]
fn random_operations_leave_the_bucket_equal_to_the_tree_on_s3s_fs() {
    for seed in seeds(Kind::S3sFs) {
        run_seed(Kind::S3sFs, seed);
    }
}

#[test]
fn random_operations_leave_the_bucket_equal_to_the_tree_on_moto() {
    for seed in seeds(Kind::Moto) {
        run_seed(Kind::Moto, seed);
    }
}
