//! The docs checked against the binary: every example command line in the
//! fenced code blocks of README.md and docs/configuration.md is extracted at
//! test time, rewritten to run against the local s3s-fs server, and run.
//!
//! What is extracted: in blocks tagged `sh`, `bash`, `shell`, `console`,
//! `cron` or untagged, every line that starts with `s3ma` (after optional
//! `NAME=value` assignments; in `console` blocks only `$ ` lines; in `cron`
//! blocks the command after the schedule, whatever path names s3ma), with
//! `\` continuation lines joined and `#` comments left out. Inline `s3ma …`
//! spans in the prose are not run: they are command names, synopses with
//! placeholders, or fragments whose context (a config file, a deploy link, a
//! named destination) the text does not give.
//!
//! How a command is rewritten: the small tables below say what stands for
//! the docs' buckets, endpoints, profiles and paths; a command that talks
//! to S3 and names no endpoint gets `--endpoint <local>`; one that names no
//! destination, or names a `--config` file, gets the nearest JSON block above
//! it in the same file as its config file (the same substitutions applied to
//! its keys). Anything the rewrite does not know (an unknown bucket, path or
//! endpoint, shell syntax) makes the command "not runnable": it must then be
//! listed in [`EXCEPTIONS`] with a reason, matched by exact text. The test
//! fails when a listed exception no longer appears in the docs, and when a
//! command is neither runnable nor listed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The documents whose command lines are checked.
const DOCS: &[&str] = &["README.md", "docs/configuration.md"];

/// The docs' bucket names: each becomes the test's bucket.
const BUCKETS: &[&str] = &["my-bucket", "www-mirror"];

/// The docs' endpoints: each becomes the local server.
const ENDPOINTS: &[&str] = &[
    "s3.isk01.sakurastorage.jp",
    "https://minio.example.com",
    "https://minio.example.com:9000",
];

/// The docs' profiles: written to the test's `~/.aws/credentials`, each
/// with the test server's keys, so `--profile NAME` keeps its meaning.
const PROFILES: &[&str] = &["minio", "sakura"];

/// What stands for a path the docs name.
#[derive(Debug, Clone, Copy)]
enum Stand {
    /// The mirrored tree (seeded with a few files).
    Tree,
    /// A real PEM certificate (the server is plain http, so it is loaded
    /// but not needed).
    CaBundle,
    /// A file of this name in the test's home directory.
    Scratch(&'static str),
    /// This file of the repository.
    Repo(&'static str),
}

/// The docs' paths (a path under one of them maps the same way).
const PATHS: &[(&str, Stand)] = &[
    ("/var/www", Stand::Tree),
    ("/etc/ssl/private-ca.pem", Stand::CaBundle),
    ("/etc/s3ma/www.json", Stand::Scratch("etc-s3ma-www.json")),
    ("/srv/restore", Stand::Scratch("restore")),
    (
        "./conf/config_mime.types",
        Stand::Repo("conf/config_mime.types"),
    ),
];

/// Command lines that are not run, by document and exact text (continuation
/// lines joined with one space, comment left out), each with its reason.
/// "DOC BUG:" marks a documented command that is wrong.
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    (
        "docs/configuration.md",
        "s3ma sync  [DIR] [s3://BUCKET[/PREFIX]] [options]",
        "synopsis with placeholders, not a command line",
    ),
    (
        "docs/configuration.md",
        "s3ma watch [DIR] [s3://BUCKET[/PREFIX]] [options] [--debounce MS] [--max-delay DURATION]",
        "synopsis with placeholders, not a command line",
    ),
    (
        "docs/configuration.md",
        "s3ma ls    [s3://BUCKET[/PREFIX]] [--recursive] [--destination NAME] [--json]",
        "synopsis with placeholders, not a command line",
    ),
    (
        "docs/configuration.md",
        "s3ma verify [DIR] [s3://BUCKET[/PREFIX]] [--download] [--primary-only] [filters] [connection options]",
        "synopsis with placeholders, not a command line",
    ),
    (
        "docs/configuration.md",
        "s3ma status [DIR] [s3://BUCKET[/PREFIX]] [--primary-only] [--json] [connection options]",
        "synopsis with placeholders, not a command line",
    ),
    (
        "docs/configuration.md",
        "s3ma restore [s3://BUCKET[/PREFIX]] DIR [--at TIME] [--delete] [--checksum] [--dry-run] [--destination NAME]",
        "synopsis with placeholders, not a command line",
    ),
    (
        "docs/configuration.md",
        "s3ma restore s3://my-bucket/site /srv/restore --at 2026-11-30T18:00:00Z",
        "needs a bucket with versioning, which s3s-fs does not have (tests/e2e/restore.rs runs it on moto)",
    ),
    (
        "docs/configuration.md",
        "s3ma ls s3://my-bucket/site --at 2h",
        "needs a bucket with versioning, which s3s-fs does not have (tests/e2e/restore.rs runs it on moto)",
    ),
    (
        "docs/configuration.md",
        "s3ma completions bash|zsh|fish",
        "synopsis (one of three shells), not a command line",
    ),
    (
        "docs/configuration.md",
        "s3ma sync [DIR] [s3://BUCKET[/PREFIX]]",
        "synopsis with placeholders, not a command line",
    ),
];

/// Commands the docs show failing, by document and exact text, with the
/// exit code the text gives them; every other runnable command must exit 0.
/// `s3ma status` after the README's `watch` example stopped: no daemon
/// runs, which needs attention (exit 1).
const EXIT_CODES: &[(&str, &str, i32)] =
    &[("README.md", "s3ma status /var/www s3://my-bucket/site", 1)];

/// A generous bound on one command (a hung command fails, not hangs).
const RUN_DEADLINE: Duration = Duration::from_secs(300);
/// A generous bound on `s3ma watch` saying `ready`.
const READY_DEADLINE: Duration = Duration::from_secs(120);

/// One command line found in a document.
#[derive(Debug, Clone)]
struct DocCommand {
    file: &'static str,
    /// 1-based line of its first line.
    line: usize,
    /// Continuation lines joined with one space, comment left out.
    text: String,
    /// The nearest JSON block above it in the same file.
    json_before: Option<String>,
}

impl DocCommand {
    fn exception(&self) -> Option<&'static str> {
        EXCEPTIONS
            .iter()
            .find(|(f, t, _)| *f == self.file && *t == self.text)
            .map(|(_, _, reason)| *reason)
    }

    fn expected_code(&self) -> i32 {
        EXIT_CODES
            .iter()
            .find(|(f, t, _)| *f == self.file && *t == self.text)
            .map_or(0, |(_, _, code)| *code)
    }

    fn place(&self) -> String {
        format!("{}:{}: {}", self.file, self.line, self.text)
    }
}

fn read_doc(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every command line of `file`, in document order.
fn extract(file: &'static str, content: &str) -> Vec<DocCommand> {
    const TAGS: &[&str] = &["", "sh", "bash", "shell", "console", "cron"];
    let lines: Vec<&str> = content.lines().collect();
    let mut out = Vec::new();
    let mut last_json: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let Some(fence) = ["```", "~~~"].into_iter().find(|f| t.starts_with(f)) else {
            i += 1;
            continue;
        };
        let tag = t[fence.len()..]
            .split(|c: char| c.is_whitespace() || c == ',' || c == '{')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !lines[end].trim().starts_with(fence) {
            end += 1;
        }
        let body = &lines[start..end.min(lines.len())];
        if tag == "json" {
            last_json = Some(body.join("\n"));
        } else if TAGS.contains(&tag.as_str()) {
            let mut j = 0;
            while j < body.len() {
                let first = j;
                let mut joined = body[j].trim().to_string();
                while joined.ends_with('\\') && j + 1 < body.len() {
                    joined.pop();
                    j += 1;
                    joined = format!("{} {}", joined.trim_end(), body[j].trim());
                }
                j += 1;
                let cmd = match tag.as_str() {
                    "console" => joined.strip_prefix("$ ").map(str::to_string),
                    "cron" => cron_command(&joined),
                    _ => Some(joined),
                };
                let Some(cmd) = cmd else { continue };
                let text = strip_comment(&cmd).trim().to_string();
                if is_s3ma_line(&text) {
                    out.push(DocCommand {
                        file,
                        line: start + first + 1,
                        text,
                        json_before: last_json.clone(),
                    });
                }
            }
        }
        i = end + 1;
    }
    out
}

/// The command of a crontab line, with whatever path names s3ma made
/// `s3ma`.
fn cron_command(line: &str) -> Option<String> {
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let fields = if line.starts_with('@') { 1 } else { 5 };
    let mut rest = line;
    for _ in 0..fields {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace)?;
        rest = &rest[end..];
    }
    let rest = rest.trim_start();
    let (program, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    (program.rsplit('/').next() == Some("s3ma")).then(|| format!("s3ma {}", args.trim_start()))
}

/// `s3ma …`, after optional `NAME=value` assignments.
fn is_s3ma_line(text: &str) -> bool {
    text.split_whitespace()
        .find(|w| !is_assignment(w))
        .is_some_and(|w| w == "s3ma")
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// `line` up to a shell comment: a `#` outside quotes at a word's start.
fn strip_comment(line: &str) -> &str {
    let (mut quote, mut word_start, mut escaped) = (None, true, false);
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            word_start = false;
            continue;
        }
        match (quote, c) {
            (None, '#') if word_start => return &line[..i],
            (None, '\\') => escaped = true,
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            _ => {}
        }
        word_start = quote.is_none() && c.is_whitespace();
    }
    line
}

/// A shell word, or the `>` of an output redirection.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Out,
}

/// Splits a command line as `sh` would, for the plain command lines the
/// docs show; any other shell syntax is an error (the line is then not
/// runnable).
fn words(line: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    toks.push(Tok::Word(std::mem::take(&mut cur)));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("an unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("an unterminated \" quote".into()),
                        },
                        Some(c @ ('$' | '`')) => {
                            return Err(format!("shell expansion `{c}` the test does not do"))
                        }
                        Some(c) => cur.push(c),
                        None => return Err("an unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next().ok_or("a trailing backslash")?);
            }
            '>' if !in_word => toks.push(Tok::Out),
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '`' | '$' | '*' | '?' | '[' | ']' | '{'
            | '}' | '#' => return Err(format!("shell syntax `{c}` the test does not run")),
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        toks.push(Tok::Word(cur));
    }
    Ok(toks)
}

/// The word after a flag (or `>`).
fn next_word(it: &mut impl Iterator<Item = Tok>, flag: &str) -> Result<String, String> {
    match it.next() {
        Some(Tok::Word(w)) => Ok(w),
        _ => Err(format!("{flag} without a value")),
    }
}

/// Shell-quotes a word for messages.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-~".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What stands for the docs' world in one test.
struct Ctx {
    bucket: String,
    endpoint: String,
    home: PathBuf,
    tree: PathBuf,
    work: PathBuf,
    pem: PathBuf,
    /// The table entries rewrites have used.
    used: std::cell::RefCell<BTreeSet<String>>,
}

/// A command ready to run.
#[derive(Debug)]
struct Plan {
    env: Vec<(String, String)>,
    args: Vec<String>,
    stdout_to: Option<PathBuf>,
    subcommand: String,
    /// A config file to write for the run (path, content); removed after.
    config: Option<(PathBuf, serde_json::Value)>,
    /// The key prefix the command mirrors to (sync and watch).
    prefix: Option<String>,
}

impl Plan {
    fn display(&self) -> String {
        let mut parts: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        parts.push("s3ma".into());
        parts.extend(self.args.iter().map(|a| quote(a)));
        if let Some(p) = &self.stdout_to {
            parts.push(format!("> {}", quote(&p.display().to_string())));
        }
        let mut s = parts.join(" ");
        if let Some((path, json)) = &self.config {
            s.push_str(&format!("\n  with config {}: {json}", path.display()));
        }
        s
    }

    fn dry_run(&self) -> bool {
        self.args.iter().any(|a| a == "--dry-run" || a == "-n")
    }
}

impl Ctx {
    fn new(env: &TestEnv, pem: PathBuf) -> Ctx {
        Ctx {
            bucket: env.bucket.clone(),
            endpoint: env.endpoint.clone(),
            home: env.tree().parent().expect("the test's home").to_path_buf(),
            tree: env.tree(),
            work: env.work(),
            pem,
            used: Default::default(),
        }
    }

    fn used(&self, entry: &str) {
        self.used.borrow_mut().insert(entry.to_string());
    }

    fn path(&self, p: &str) -> Result<String, String> {
        if p == "~" || p.starts_with("~/") {
            return Ok(format!("{}{}", self.home.display(), &p[1..]));
        }
        for (doc, stand) in PATHS {
            let Some(rest) = p.strip_prefix(doc) else {
                continue;
            };
            if !(rest.is_empty() || rest.starts_with('/')) {
                continue;
            }
            self.used(doc);
            let base = match stand {
                Stand::Tree => self.tree.clone(),
                Stand::CaBundle => self.pem.clone(),
                Stand::Scratch(name) => self.home.join(name),
                Stand::Repo(rel) => Path::new(env!("CARGO_MANIFEST_DIR")).join(rel),
            };
            return Ok(format!("{}{rest}", base.display()));
        }
        Err(format!("the path {p} is not in PATHS"))
    }

    fn bucket_url(&self, url: &str) -> Result<String, String> {
        let rest = &url["s3://".len()..];
        let (name, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !BUCKETS.contains(&name) {
            return Err(format!("the bucket {name} is not in BUCKETS"));
        }
        self.used(name);
        Ok(format!("s3://{}{tail}", self.bucket))
    }

    fn endpoint(&self, e: &str) -> Result<String, String> {
        if !ENDPOINTS.contains(&e) {
            return Err(format!("the endpoint {e} is not in ENDPOINTS"));
        }
        self.used(e);
        Ok(self.endpoint.clone())
    }

    fn profile(&self, p: &str) -> Result<String, String> {
        if !PROFILES.contains(&p) {
            return Err(format!("the profile {p} is not in PROFILES"));
        }
        self.used(p);
        Ok(p.to_string())
    }

    /// Any other word: a bucket URL, a path or as it is.
    fn value(&self, w: &str) -> Result<String, String> {
        if w.starts_with("s3://") {
            self.bucket_url(w)
        } else if w.starts_with('/') || w.starts_with('~') || w.starts_with("./") {
            self.path(w)
        } else {
            Ok(w.to_string())
        }
    }

    fn rewrite(&self, cmd: &DocCommand) -> Result<Plan, String> {
        let toks = words(&cmd.text)?;
        let mut it = toks.into_iter().peekable();
        let mut env = Vec::new();
        while let Some(Tok::Word(w)) = it.peek().cloned() {
            if !is_assignment(&w) {
                break;
            }
            let (k, v) = w.split_once('=').expect("an assignment");
            let v = match k {
                "AWS_PROFILE" => self.profile(v)?,
                "AWS_ENDPOINT_URL" | "AWS_ENDPOINT_URL_S3" => self.endpoint(v)?,
                _ => self.value(v)?,
            };
            env.push((k.to_string(), v));
            it.next();
        }
        if it.next() != Some(Tok::Word("s3ma".into())) {
            return Err("not an s3ma command".into());
        }
        let mut args: Vec<String> = Vec::new();
        let mut stdout_to = None;
        let mut config_path = None;
        let mut subcommand = None;
        let mut has_endpoint = env.iter().any(|(k, _)| k.starts_with("AWS_ENDPOINT_URL"));
        while let Some(tok) = it.next() {
            let w = match tok {
                Tok::Out => {
                    let target = next_word(&mut it, ">")?;
                    if !target.starts_with("~/") {
                        return Err(format!("output to {target}, outside the home directory"));
                    }
                    stdout_to = Some(PathBuf::from(self.path(&target)?));
                    continue;
                }
                Tok::Word(w) => w,
            };
            let (flag, inline) = match w.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (w.clone(), None),
            };
            let takes = [
                "--endpoint",
                "--profile",
                "--config",
                "--ca-bundle",
                "--state-dir",
            ];
            if takes.contains(&flag.as_str()) {
                let v = match inline {
                    Some(v) => v,
                    None => next_word(&mut it, &flag)?,
                };
                let v = match flag.as_str() {
                    "--endpoint" => {
                        has_endpoint = true;
                        self.endpoint(&v)?
                    }
                    "--profile" => self.profile(&v)?,
                    "--config" => {
                        let p = self.path(&v)?;
                        config_path = Some(PathBuf::from(&p));
                        p
                    }
                    _ => self.path(&v)?,
                };
                args.push(flag);
                args.push(v);
                continue;
            }
            if subcommand.is_none() && !w.starts_with('-') {
                subcommand = Some(w.clone());
            }
            args.push(self.value(&w)?);
        }
        let subcommand = subcommand.unwrap_or_default();
        let talks_to_s3 =
            ["sync", "watch", "ls", "verify", "status", "restore"].contains(&subcommand.as_str());
        let dest = args.iter().find(|a| a.starts_with("s3://")).cloned();
        let from_config = config_path.is_some()
            || (dest.is_none()
                && ["sync", "watch", "verify", "status"].contains(&subcommand.as_str()));
        let mut config = None;
        let mut prefix = dest.as_deref().map(prefix_of);
        if from_config {
            let json = cmd
                .json_before
                .as_deref()
                .ok_or("it reads a config file and no JSON block comes before it")?;
            let mut value: serde_json::Value = serde_json::from_str(json)
                .map_err(|e| format!("the JSON block before it does not parse: {e}"))?;
            self.config_keys(&mut value)?;
            let obj = value.as_object_mut().ok_or("the config is not an object")?;
            if !has_endpoint && !obj.contains_key("endpoint") {
                obj.insert("endpoint".into(), self.endpoint.clone().into());
            }
            has_endpoint = true;
            if prefix.is_none() {
                let top = obj.get("topPrefix").and_then(|v| v.as_str()).unwrap_or("");
                prefix = Some(prefix_of(&format!("s3://b/{top}")));
            }
            let path = config_path.unwrap_or_else(|| self.work.join("conf/config.json"));
            config = Some((path, value));
        }
        if talks_to_s3 && !has_endpoint {
            args.push("--endpoint".into());
            args.push(self.endpoint.clone());
        }
        if subcommand == "watch" && !args.iter().any(|a| a == "--json") {
            args.push("--json".into());
        }
        Ok(Plan {
            env,
            args,
            stdout_to,
            prefix: prefix.filter(|_| ["sync", "watch"].contains(&subcommand.as_str())),
            subcommand,
            config,
        })
    }

    /// The same substitutions on the keys of a config file.
    fn config_keys(&self, v: &mut serde_json::Value) -> Result<(), String> {
        let Some(obj) = v.as_object_mut() else {
            return Ok(());
        };
        for (key, val) in obj.iter_mut() {
            let s = val.as_str().map(str::to_string);
            match (key.as_str(), s) {
                ("watchDir" | "caBundle" | "mimeConfig" | "stateDir", Some(s)) => {
                    *val = self.path(&s)?.into()
                }
                ("bucket" | "bucketSync", Some(s)) => {
                    let url = self.bucket_url(&format!("s3://{s}"))?;
                    *val = url["s3://".len()..].to_string().into();
                }
                ("endpoint" | "endpointSync", Some(s)) => *val = self.endpoint(&s)?.into(),
                ("profile", Some(s)) => *val = self.profile(&s)?.into(),
                ("accessKeyId", Some(_)) => *val = ACCESS_KEY.into(),
                ("secretAccessKey", Some(_)) => *val = SECRET_KEY.into(),
                ("destinations", _) => {
                    for d in val.as_array_mut().into_iter().flatten() {
                        self.config_keys(d)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The key prefix of `s3://BUCKET[/PREFIX]`, as a folder (`""` or ending
/// in `/`).
fn prefix_of(url: &str) -> String {
    let rest = url.trim_start_matches("s3://");
    let p = rest.split_once('/').map_or("", |(_, p)| p);
    if p.is_empty() || p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    }
}

/// Every command of every document.
fn all_commands() -> Vec<DocCommand> {
    DOCS.iter().flat_map(|f| extract(f, &read_doc(f))).collect()
}

/// A context with made-up values, for rewriting without a server.
fn offline_ctx() -> Ctx {
    Ctx {
        bucket: "test-bucket".into(),
        endpoint: "http://127.0.0.1:1".into(),
        home: "/nonexistent/home".into(),
        tree: "/nonexistent/home/tree".into(),
        work: "/nonexistent/home/work".into(),
        pem: "/nonexistent/home/ca.pem".into(),
        used: Default::default(),
    }
}

#[test]
fn extraction_reads_fences_continuations_comments_and_cron() {
    let md = "text `s3ma inline` here\n\
              ```sh\n\
              s3ma sync /var/www s3://my-bucket/site \\\n  --delete   # and a comment\n\
              cargo build\n\
              AWS_PROFILE=minio s3ma ls\n\
              ```\n\
              ```json\n{\"bucket\": \"b\"}\n```\n\
              \x20 ```console\n  $ s3ma ls '#x'\n  s3ma output line\n  ```\n\
              ```cron\n15 3 * * *  $HOME/.cargo/bin/s3ma sync -q x\n```\n\
              ```text\ns3ma not-extracted\n```\n";
    let got: Vec<(usize, String, bool)> = extract("t.md", md)
        .into_iter()
        .map(|c| (c.line, c.text, c.json_before.is_some()))
        .collect();
    let want = vec![
        (
            3,
            "s3ma sync /var/www s3://my-bucket/site --delete".to_string(),
            false,
        ),
        (6, "AWS_PROFILE=minio s3ma ls".to_string(), false),
        (12, "s3ma ls '#x'".to_string(), true),
        (16, "s3ma sync -q x".to_string(), true),
    ];
    assert_eq!(got, want);
    assert_eq!(
        words("s3ma a 'b c' \"d\\\"e\" f\\ g > ~/x").expect("words"),
        ["s3ma", "a", "b c", "d\"e", "f g"]
            .iter()
            .map(|w| Tok::Word(w.to_string()))
            .chain([Tok::Out, Tok::Word("~/x".into())])
            .collect::<Vec<_>>()
    );
    assert!(words("s3ma completions bash|zsh").is_err());
    assert!(words("s3ma sync [DIR]").is_err());
}

/// Exceptions that are still in the docs, commands that are runnable or
/// listed, and table entries that are still used: checked without a server.
#[test]
fn every_doc_command_is_runnable_or_a_listed_exception() {
    let commands = all_commands();
    let ctx = offline_ctx();
    let mut problems = Vec::new();
    for (file, text, reason) in EXCEPTIONS {
        if !commands.iter().any(|c| c.file == *file && c.text == *text) {
            problems.push(format!(
                "exception no longer in {file} (remove it from EXCEPTIONS): {text}  ({reason})"
            ));
        }
    }
    for (file, text, code) in EXIT_CODES {
        if !commands.iter().any(|c| c.file == *file && c.text == *text) {
            problems.push(format!(
                "EXIT_CODES entry (exit {code}) no longer in {file}: {text}"
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for c in &commands {
        if !seen.insert((c.file, c.text.clone())) {
            continue;
        }
        if c.exception().is_some() {
            continue;
        }
        if let Err(why) = ctx.rewrite(c) {
            problems.push(format!(
                "{}\n  neither runnable nor in EXCEPTIONS: {why}",
                c.place()
            ));
        }
    }
    let used = ctx.used.borrow();
    let entries = BUCKETS
        .iter()
        .chain(ENDPOINTS)
        .chain(PROFILES)
        .chain(PATHS.iter().map(|(p, _)| p));
    for entry in entries {
        if !used.contains(*entry) {
            problems.push(format!(
                "the substitution table entry {entry} is used by no runnable command: remove it"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} command lines found in {DOCS:?}; problems:\n{}",
        commands.len(),
        problems.join("\n")
    );
}

#[test]
fn readme_commands_run() {
    run_doc("README.md");
}

#[test]
fn configuration_commands_run() {
    run_doc("docs/configuration.md");
}

/// Runs every runnable command line of `file` in document order, in one
/// test world (so a listing after a sync sees what it sent), and reports
/// every failure at once.
fn run_doc(file: &'static str) {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("index.html", "<h1>home</h1>\n");
    env.write("css/style.css", "body { margin: 0 }\n");
    let home = env.tree().parent().expect("home").to_path_buf();
    let aws = home.join(".aws");
    std::fs::create_dir_all(&aws).expect("mkdir ~/.aws");
    let creds: String = PROFILES
        .iter()
        .map(|p| {
            format!(
                "[{p}]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
            )
        })
        .collect();
    write_file(&aws.join("credentials"), &creds);
    let ctx = Ctx::new(&env, make_pem(&home));

    let commands = extract(file, &read_doc(file));
    let mut failures = Vec::new();
    let mut ran = 0;
    for c in &commands {
        if c.exception().is_some() {
            continue;
        }
        let plan = match ctx.rewrite(c) {
            Ok(p) => p,
            Err(why) => {
                failures.push(format!(
                    "{}\n  neither runnable nor in EXCEPTIONS: {why}",
                    c.place()
                ));
                continue;
            }
        };
        ran += 1;
        eprintln!("{}\n  rewritten: {}", c.place(), plan.display());
        if let Err(why) = run_one(&env, c, &plan) {
            failures.push(format!(
                "{}\n  rewritten: {}\n  {why}",
                c.place(),
                plan.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{file}: {} command lines, {ran} run, {} failed:\n\n{}",
        commands.len(),
        failures.len(),
        failures.join("\n\n")
    );
    assert!(ran > 0, "{file}: no command line ran");
}

/// A self-signed certificate in PEM form.
fn make_pem(dir: &Path) -> PathBuf {
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
            "/CN=s3ma docs test CA",
        ],
    );
    dir.join("ca.pem")
}

fn run_one(env: &TestEnv, c: &DocCommand, plan: &Plan) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some((path, json)) = &plan.config {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        write_file(path, &serde_json::to_string_pretty(json).expect("json"));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    if let Some(p) = &plan.stdout_to {
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    }
    let result = if plan.subcommand == "watch" {
        run_watch(env, plan)
    } else {
        run_once(env, c, plan)
    };
    if let Some((path, _)) = &plan.config {
        std::fs::remove_file(path).expect("remove the config file");
    }
    result
}

fn command(env: &TestEnv, plan: &Plan) -> Command {
    let mut cmd = env.command();
    cmd.envs(plan.env.iter().map(|(k, v)| (k, v)))
        .args(&plan.args);
    cmd
}

fn run_once(env: &TestEnv, c: &DocCommand, plan: &Plan) -> Result<(), String> {
    let mut cmd = command(env, plan);
    let run = run_with_deadline(env, &mut cmd, plan.stdout_to.as_deref())?;
    let want = c.expected_code();
    if run.code != want {
        return Err(format!(
            "exit {} where the docs imply {want}:\n{run}",
            run.code
        ));
    }
    if want == 0 {
        if let Some(what) = error_output(&run.all()) {
            return Err(format!("exit 0 but it printed {what}:\n{run}"));
        }
    }
    if let Some(p) = &plan.stdout_to {
        let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return Err(format!("nothing written to {}:\n{run}", p.display()));
        }
    }
    if want == 0 && plan.subcommand == "ls" && run.stdout.trim().is_empty() {
        return Err(format!("the docs show a listing; it printed none:\n{run}"));
    }
    if want == 0 && plan.subcommand == "sync" && !plan.dry_run() {
        mirrored(env, plan).map_err(|e| format!("{e}\n{run}"))?;
    }
    Ok(())
}

/// The tree is in the bucket under the command's prefix.
fn mirrored(env: &TestEnv, plan: &Plan) -> Result<(), String> {
    let Some(prefix) = &plan.prefix else {
        return Ok(());
    };
    let want = expected_in(&env.tree(), prefix);
    let got = env.listing();
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the tree is not mirrored under {prefix:?}: missing {missing:?}; the bucket holds {got:?}"
        ))
    }
}

/// What in the output says an error, if anything.
fn error_output(all: &str) -> Option<&'static str> {
    if all.contains("error:") {
        Some("\"error:\"")
    } else if all.contains(r#""action":"error""#) || all.contains(r#""action":"fatal""#) {
        Some("an error line")
    } else {
        None
    }
}

/// Runs `cmd` (stdout to `stdout_to` when given) and kills it past
/// [`RUN_DEADLINE`].
fn run_with_deadline(
    env: &TestEnv,
    cmd: &mut Command,
    stdout_to: Option<&Path>,
) -> Result<Run, String> {
    let dir = env.tree().parent().expect("home").join("docs-runs");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = stdout_to.map_or_else(|| dir.join("stdout"), Path::to_path_buf);
    let err = dir.join("stderr");
    cmd.stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .stdin(Stdio::null());
    let mut child = cmd.spawn().expect("start s3ma");
    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "still running after {RUN_DEADLINE:?}, killed\n--- stderr\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = if stdout_to.is_some() {
        format!("(to {})\n", out.display())
    } else {
        std::fs::read_to_string(&out).unwrap_or_default()
    };
    Ok(Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    })
}

/// `s3ma watch`: start it, wait for its `ready` line, check the mirror,
/// SIGTERM it and expect exit 0.
fn run_watch(env: &TestEnv, plan: &Plan) -> Result<(), String> {
    let dir = env.tree().parent().expect("home").join("docs-runs");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (out, err) = (dir.join("watch.out"), dir.join("watch.err"));
    let mut child = command(env, plan)
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start s3ma watch");
    let logs = || {
        format!(
            "--- watch stdout\n{}--- watch stderr\n{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&err).unwrap_or_default()
        )
    };
    let ready = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["action"] == "ready")
    };
    let deadline = Instant::now() + READY_DEADLINE;
    let mut outcome = Ok(());
    while !ready() {
        if let Some(status) = child.try_wait().expect("wait") {
            return Err(format!(
                "exited ({status}) before its ready line\n{}",
                logs()
            ));
        }
        if Instant::now() > deadline {
            outcome = Err(format!(
                "no ready line within {READY_DEADLINE:?}\n{}",
                logs()
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if outcome.is_ok() {
        outcome = mirrored(env, plan).map_err(|e| format!("after ready: {e}\n{}", logs()));
    }
    let status = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -s TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("did not exit within 60 s of SIGTERM\n{}", logs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    outcome?;
    if code != 0 {
        return Err(format!(
            "exit {code} after SIGTERM, where the docs say 0\n{}",
            logs()
        ));
    }
    if let Some(what) = error_output(&logs()) {
        return Err(format!("it printed {what}\n{}", logs()));
    }
    Ok(())
}
