//! The config file: node-s3ma's `conf/config.json` (camelCase keys), every
//! key node-s3ma understood keeping its meaning, plus s3ma's own.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::units::{DurationValue, SizeValue};

/// Every key the config file may hold. node-s3ma's keys first, then the AWS
/// SDK for JavaScript keys node-s3ma passed through, then s3ma's own.
const KNOWN_KEYS: &[&str] = &[
    "watchDir",
    "accessKeyId",
    "secretAccessKey",
    "region",
    "bucket",
    "topPrefix",
    "bucketSync",
    "topPrefixSync",
    "endpointSync",
    "storageClass",
    "mtimeToMetaData",
    "mimeConfig",
    "syslogFacility",
    "sessionToken",
    "s3ForcePathStyle",
    "sslEnabled",
    "maxRetries",
    "signatureVersion",
    "endpoint",
    "pathStyle",
    "profile",
    "caBundle",
    "exclude",
    "includeHidden",
    "followSymlinks",
    "oneFileSystem",
    "headers",
    "backupPrefix",
    "sse",
    "metadata",
    "sseKmsKeyId",
    "sseCKeyFile",
    "checksumAlgorithm",
    "backupTimestamp",
    "walkThreads",
    "delete",
    "maxDelete",
    "concurrency",
    "multipartThreshold",
    "multipartChunkSize",
    "stateDir",
    "connectTimeout",
    "readTimeout",
    "includeTempFiles",
    "debounce",
    "rescanInterval",
    "maxDelay",
    "maxDeleteWindow",
    "eventQueue",
    "metricsAddr",
    "bwlimit",
    "trustState",
    "fullCheckEvery",
    "metricsFile",
    "destinations",
];

/// Keys whose values are never shown, not even in an error about them.
const SECRET_KEYS: &[&str] = &["secretAccessKey", "sessionToken"];

/// The config file as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileConfig {
    pub watch_dir: Option<PathBuf>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub top_prefix: Option<String>,
    pub bucket_sync: Option<String>,
    pub top_prefix_sync: Option<String>,
    pub endpoint_sync: Option<String>,
    pub storage_class: Option<String>,
    #[serde(rename = "mtimeToMetaData")]
    pub mtime_to_meta_data: Option<bool>,
    pub mime_config: Option<PathBuf>,
    pub headers: Option<Vec<crate::headers::RuleSpec>>,
    pub backup_prefix: Option<String>,
    pub backup_timestamp: Option<bool>,
    pub sse: Option<String>,
    pub metadata: Option<bool>,
    pub sse_kms_key_id: Option<String>,
    pub sse_c_key_file: Option<PathBuf>,
    pub checksum_algorithm: Option<String>,
    pub syslog_facility: Option<serde_json::Value>,
    #[serde(rename = "s3ForcePathStyle")]
    pub s3_force_path_style: Option<bool>,
    pub ssl_enabled: Option<bool>,
    pub max_retries: Option<u32>,
    pub signature_version: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: Option<bool>,
    pub profile: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    pub exclude: Option<Vec<String>>,
    pub include_hidden: Option<bool>,
    pub follow_symlinks: Option<bool>,
    pub one_file_system: Option<bool>,
    pub walk_threads: Option<usize>,
    pub delete: Option<bool>,
    pub max_delete: Option<u64>,
    pub concurrency: Option<usize>,
    pub multipart_threshold: Option<SizeValue>,
    pub multipart_chunk_size: Option<SizeValue>,
    pub state_dir: Option<PathBuf>,
    pub connect_timeout: Option<f64>,
    pub read_timeout: Option<f64>,
    pub include_temp_files: Option<bool>,
    /// Milliseconds.
    pub debounce: Option<u64>,
    /// A duration such as `"1h"`, or seconds as a number.
    pub rescan_interval: Option<DurationValue>,
    /// Longest a changing path waits before it is uploaded anyway.
    pub max_delay: Option<DurationValue>,
    /// The window `maxDelete` counts deletions over, in `watch`.
    pub max_delete_window: Option<DurationValue>,
    /// Events held between the kernel and the daemon.
    pub event_queue: Option<usize>,
    /// Where `watch` serves metrics.
    pub metrics_addr: Option<String>,
    /// Where metrics are written.
    pub metrics_file: Option<PathBuf>,
    /// Bytes per second for all uploads, or a timetable.
    pub bwlimit: Option<String>,
    pub trust_state: Option<bool>,
    pub full_check_every: Option<DurationValue>,
    /// Further buckets every object is mirrored to.
    pub destinations: Option<Vec<DestinationFile>>,
}

/// One entry of `destinations`. Unset connection keys are the primary's.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationFile {
    pub name: Option<String>,
    pub bucket: String,
    pub prefix: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub profile: Option<String>,
    pub path_style: Option<bool>,
    pub storage_class: Option<String>,
    /// This destination's own `--bwlimit`.
    pub bwlimit: Option<String>,
    /// This destination's own `--backup-prefix` (on its service).
    pub backup_prefix: Option<String>,
}

/// A loaded config file and what it said that deserves a warning.
#[derive(Debug, Default)]
pub struct Loaded {
    pub file: FileConfig,
    /// Where it was read from; `None` when there is none.
    pub path: Option<PathBuf>,
    /// It is `./conf/config.json`, read because it was there (not named).
    pub found_in_cwd: bool,
    pub warnings: Vec<String>,
}

impl Loaded {
    /// The file, for messages: `the config file conf/config.json`.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("the config file {}", p.display()),
            None => "the config file".into(),
        }
    }
}

/// node-s3ma's place for the file, read when present and no other is named.
pub const DEFAULT_PATH: &str = "conf/config.json";

/// Finds and reads the config file: the explicit path (flag or
/// `S3MA_CONFIG`) must exist; otherwise `./conf/config.json` is used when
/// present.
pub fn load(explicit: Option<&Path>) -> Result<Loaded> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let default = PathBuf::from(DEFAULT_PATH);
            if !default.is_file() {
                return Ok(Loaded::default());
            }
            default
        }
    };
    let found_in_cwd = explicit.is_none();
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the config file {} (give another with --config or S3MA_CONFIG)",
            path.display()
        )
    })?;
    let file = parse(&text).with_context(|| format!("in the config file {}", path.display()))?;
    let warnings = warnings(&path, &file);
    Ok(Loaded {
        file,
        path: Some(path),
        found_in_cwd,
        warnings,
    })
}

/// What the file says that s3ma reads differently from node-s3ma, or that
/// is unsafe.
fn warnings(path: &Path, file: &FileConfig) -> Vec<String> {
    let mut out = Vec::new();
    let shown = path.display();
    check_permissions(path, file, &mut out);
    if file.bucket_sync.is_none() {
        let orphans: Vec<&str> = [
            ("topPrefixSync", file.top_prefix_sync.is_some()),
            ("endpointSync", file.endpoint_sync.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if !orphans.is_empty() {
            out.push(format!(
                "{shown}: {} {} no effect without bucketSync; objects go to the primary bucket only",
                orphans.join(" and "),
                if orphans.len() == 1 { "has" } else { "have" }
            ));
        }
    }
    if let Some(v) = file.signature_version.as_deref().filter(|v| *v != "v4") {
        out.push(format!(
            "{shown}: signatureVersion \"{v}\" is ignored; s3ma always signs with AWS Signature Version 4"
        ));
    }
    if file.syslog_facility.is_some() {
        out.push(format!(
            "{shown}: syslogFacility is ignored; s3ma logs to stdout/stderr (use journald or your cron mail)"
        ));
    }
    out
}

/// Parses config JSON: syntax errors name line and column, unknown keys get
/// a suggestion, type errors name the key (never a secret's value).
pub fn parse(text: &str) -> Result<FileConfig> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "invalid JSON at line {}, column {}: {}",
            e.line(),
            e.column(),
            strip_position(&e)
        )
    })?;
    let Some(map) = value.as_object() else {
        bail!("the config must be a JSON object ({{ \"key\": value, … }})");
    };
    for key in map.keys() {
        if !KNOWN_KEYS.contains(&key.as_str()) {
            match did_you_mean(key, KNOWN_KEYS) {
                Some(s) => bail!("unknown key \"{key}\"; did you mean \"{s}\"?"),
                None => bail!(
                    "unknown key \"{key}\"; see docs/configuration.md for the keys s3ma reads"
                ),
            }
        }
    }
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let detail = strip_position(&inner);
        // A duplicate is reported at the object holding it ("."): name the
        // key itself.
        let key = match duplicate_of(&detail) {
            Some(dup) if path == "." => dup.to_string(),
            Some(dup) => format!("{path}.{dup}"),
            None => path,
        };
        let last = key.rsplit('.').next().unwrap_or(&key);
        let detail = if duplicate_of(&detail).is_some() {
            "given twice; keep one".to_string()
        } else if SECRET_KEYS.contains(&last) {
            "must be a string (the value is not shown, as it is a secret)".to_string()
        } else {
            detail
        };
        anyhow!(
            "key \"{key}\" at line {}, column {}: {detail}",
            inner.line(),
            inner.column(),
        )
    })
}

/// The key named in serde's "duplicate field `x`".
fn duplicate_of(detail: &str) -> Option<&str> {
    detail.strip_prefix("duplicate field `")?.split('`').next()
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The closest of `known` to `word`, ignoring case, when it is close
/// enough to be what was meant.
pub fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (strsim::levenshtein(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn check_permissions(path: &Path, file: &FileConfig, warnings: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    let in_destinations = file
        .destinations
        .iter()
        .flatten()
        .any(|d| d.secret_access_key.is_some());
    if file.secret_access_key.is_none() && !in_destinations {
        return;
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            warnings.push(format!(
                "{} holds a secret key and is readable by group or others; run: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_s3ma_config_parses() {
        let text = r#"{
            "watchDir": "/tmp",
            "accessKeyId": "AKIA******",
            "secretAccessKey": "**********",
            "region": "us-west-2",
            "bucket": "b-oregon",
            "topPrefix": "backup/",
            "bucketSync": "b-ireland",
            "topPrefixSync": "backup/",
            "endpointSync": "https://s3-eu-west-1.amazonaws.com",
            "storageClass": "REDUCED_REDUNDANCY",
            "mtimeToMetaData": true,
            "mimeConfig": "./conf/config_mime.types",
            "syslogFacility": "local0"
        }"#;
        let c = parse(text).expect("valid");
        assert_eq!(c.bucket.as_deref(), Some("b-oregon"));
        assert_eq!(c.top_prefix.as_deref(), Some("backup/"));
        assert_eq!(c.mtime_to_meta_data, Some(true));
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let err = parse("{\n  \"bucket\": \"x\",\n  oops\n}").expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("line 3, column 3"), "{msg}");
    }

    #[test]
    fn unknown_key_suggests() {
        let err = parse(r#"{"bucekt": "x"}"#).expect_err("unknown key");
        assert!(err.to_string().contains("did you mean \"bucket\""), "{err}");
        let err = parse(r#"{"topprefix": "x"}"#).expect_err("unknown key");
        assert!(
            err.to_string().contains("did you mean \"topPrefix\""),
            "{err}"
        );
        let err = parse(r#"{"zzzzzzzz": 1}"#).expect_err("unknown key");
        assert!(
            err.to_string().contains("unknown key \"zzzzzzzz\""),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_key() {
        let err = parse("{\"concurrency\": \"many\"}").expect_err("wrong type");
        let msg = err.to_string();
        assert!(msg.contains("key \"concurrency\""), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn secrets_are_never_echoed() {
        for text in [
            r#"{"secretAccessKey": 918273645546372819}"#,
            r#"{"sessionToken": 918273645546372819}"#,
            r#"{"destinations": [{"bucket": "c", "secretAccessKey": 918273645546372819}]}"#,
            r#"{"secretAccessKey": ["918273645546372819"]}"#,
        ] {
            let msg = format!("{:#}", parse(text).expect_err(text));
            assert!(!msg.contains("918273645546372819"), "{msg}");
            assert!(msg.contains("must be a string"), "{msg}");
        }
    }

    #[test]
    fn a_duplicate_key_is_named() {
        let err = parse(r#"{"bucket": "a", "bucket": "b"}"#).expect_err("duplicate");
        assert!(err.to_string().starts_with("key \"bucket\""), "{err}");
        let err = parse(r#"{"secretAccessKey": "S1", "secretAccessKey": "S2"}"#)
            .expect_err("duplicate secret");
        assert!(err.to_string().contains("given twice"), "{err}");
        assert!(!err.to_string().contains("S1"), "{err}");
        let err =
            parse(r#"{"destinations": [{"bucket": "a", "bucket": "b"}]}"#).expect_err("duplicate");
        assert!(
            err.to_string()
                .starts_with("key \"destinations[0].bucket\""),
            "{err}"
        );
    }

    #[test]
    fn orphan_sync_keys_are_named_alone() {
        let dir = std::env::temp_dir();
        let file = parse(r#"{"endpointSync": "https://x.example"}"#).expect("valid");
        let w = warnings(&dir.join("c.json"), &file);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("endpointSync has no effect"), "{w:?}");
        assert!(!w[0].contains("topPrefixSync"), "{w:?}");
    }
}
