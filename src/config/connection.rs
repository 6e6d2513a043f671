//! How to reach an S3 service: endpoint, region, addressing, TLS, timeouts
//! and where the credentials come from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::env::Env;
use super::file::{did_you_mean, Loaded};
use super::units::seconds;
use crate::cli::ConnectionArgs;

/// Access keys given in the config file. Debug never shows the secret.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .finish()
    }
}

/// How to reach the S3 service.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Custom endpoint URL with scheme; `None` means AWS.
    pub endpoint: Option<String>,
    /// Region to sign for; `None` lets the AWS chain decide (then us-east-1).
    pub region: Option<String>,
    /// Profile for the AWS credential chain.
    pub profile: Option<String>,
    /// `--profile` was given: credentials come from that profile only.
    pub profile_only: bool,
    /// Path-style addressing (`host/bucket`) rather than virtual host.
    pub path_style: bool,
    /// Extra CA certificates (PEM) added to the system roots.
    pub ca_bundle: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Attempts per request, retries included.
    pub max_attempts: u32,
    /// Keys from the config file; `None` uses the AWS chain.
    pub credentials: Option<StaticCredentials>,
    /// Where the credentials come from, for the message when the server
    /// rejects them.
    pub keys_from: String,
    /// `-vv`: one line per request.
    pub log_requests: bool,
}

impl Connection {
    /// Where requests go, for messages.
    pub fn describe(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!(
                "AWS S3 ({})",
                self.region.as_deref().unwrap_or("default region")
            ),
        }
    }

    /// Talks to AWS S3 itself, where AWS's rules for names apply.
    pub fn is_aws(&self) -> bool {
        service(self) == "aws"
    }
}

/// A URL with a scheme; `host` alone means https (http when the node-s3ma
/// key `sslEnabled` is false).
pub fn endpoint_url(value: &str, ssl: bool) -> Result<String> {
    let v = value.trim().trim_end_matches('/');
    if v.is_empty() {
        bail!("the endpoint is empty");
    }
    let (url, rest) = match v.split_once("://") {
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            if scheme != "http" && scheme != "https" {
                bail!("endpoint '{value}' has scheme '{scheme}'; use http:// or https://");
            }
            (format!("{scheme}://{rest}"), rest)
        }
        None => (format!("{}://{v}", if ssl { "https" } else { "http" }), v),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some((_, host)) = authority.rsplit_once('@') {
        // Never echo what may be a password.
        bail!(
            "endpoint '{}' holds a user name or password, which S3 requests do not use (they \
             are signed with the access keys); write it as {}",
            url.replacen(authority, &format!("***@{host}"), 1),
            url.replacen(authority, host, 1)
        );
    }
    if rest.contains(['?', '#']) || rest.chars().any(char::is_whitespace) {
        bail!(
            "endpoint '{value}' is not a plain URL: it has a query, a fragment or a space; \
             write scheme://host[:port][/path]"
        );
    }
    let host_end = match authority.strip_prefix('[') {
        Some(inner) => inner.find(']').map(|i| i + 2),
        None => Some(authority.find(':').unwrap_or(authority.len())),
    };
    let Some(host_end) = host_end else {
        bail!("endpoint '{value}' has an unclosed [ in its IPv6 address");
    };
    if host_end == 0 || authority.is_empty() {
        bail!("endpoint '{value}' names no host");
    }
    if let Some(port) = authority[host_end..].strip_prefix(':') {
        match port.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) && !port.starts_with('0') => {}
            _ => bail!("endpoint '{value}' has port '{port}'; a port is a number from 1 to 65535"),
        }
    } else if host_end < authority.len() {
        bail!("endpoint '{value}' is not a URL (expected host[:port] after the scheme)");
    }
    Ok(url)
}

/// AWS's commercial, GovCloud, China and sovereign regions with S3, for
/// suggestions; a region of the same shape that is not listed (a new one)
/// is accepted.
const AWS_REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ca-central-1",
    "ca-west-1",
    "eu-central-1",
    "eu-central-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-south-1",
    "eu-south-2",
    "eu-north-1",
    "eusc-de-east-1",
    "il-central-1",
    "me-south-1",
    "me-central-1",
    "mx-central-1",
    "sa-east-1",
    "us-gov-east-1",
    "us-gov-west-1",
    "cn-north-1",
    "cn-northwest-1",
];

/// A name shaped like an AWS region: `eu-west-1`, `us-gov-west-1`,
/// `eusc-de-east-1`.
fn looks_like_aws_region(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    parts.len() >= 3
        && (2..=4).contains(&parts[0].len())
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// With no endpoint, the region picks the AWS host: it must be one.
pub(super) fn check_aws_region(region: &str, from: &str) -> Result<()> {
    if looks_like_aws_region(region) {
        return Ok(());
    }
    let hint = match did_you_mean(region, AWS_REGIONS) {
        Some(s) => format!("did you mean {s}?"),
        None => "AWS regions look like eu-west-1.".into(),
    };
    bail!(
        "the region '{region}' ({from}) is not an AWS region, and no endpoint is given; \
         {hint} For another provider, give its --endpoint (config key \"endpoint\")"
    )
}

/// The region of an AWS S3 endpoint (`s3.eu-west-1.amazonaws.com`,
/// `s3-eu-west-1.amazonaws.com`, `s3.amazonaws.com`), `None` for any other
/// host.
pub fn aws_region_of(url: &str) -> Option<String> {
    let host = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = host.split(['/', ':']).next()?.to_ascii_lowercase();
    let name = host.strip_suffix(".amazonaws.com")?;
    let region = match name {
        "s3" | "s3-external-1" => "us-east-1",
        _ => name.strip_prefix("s3.dualstack.").or_else(|| {
            name.strip_prefix("s3.")
                .or_else(|| name.strip_prefix("s3-"))
        })?,
    };
    // Not `accelerate` or `website-us-east-1`.
    looks_like_aws_region(region).then(|| region.to_string())
}

/// The service a connection talks to, for comparing two of them: AWS
/// (any region, as bucket names are global there) or the endpoint URL in
/// lower case.
pub fn service(conn: &Connection) -> String {
    match &conn.endpoint {
        None => "aws".into(),
        Some(url) if aws_region_of(url).is_some() => "aws".into(),
        Some(url) => url.trim_end_matches('/').to_ascii_lowercase(),
    }
}

/// Points a connection at `url`: an AWS S3 endpoint becomes AWS in that
/// region (virtual-host addressing), any other host a custom endpoint
/// (path style unless told otherwise).
pub fn set_endpoint(conn: &mut Connection, url: String, path_style: Option<bool>) {
    match aws_region_of(&url) {
        Some(region) => {
            conn.endpoint = None;
            conn.region = Some(region);
            conn.path_style = path_style.unwrap_or(false);
        }
        None => {
            conn.endpoint = Some(url);
            conn.path_style = path_style.unwrap_or(true);
        }
    }
}

/// Both use the same keys or the same profile.
pub fn same_account(a: &Connection, b: &Connection) -> bool {
    match (&a.credentials, &b.credentials) {
        (Some(x), Some(y)) => {
            x.access_key_id == y.access_key_id
                && x.secret_access_key == y.secret_access_key
                && x.session_token == y.session_token
        }
        (None, None) => a.profile == b.profile,
        _ => false,
    }
}

/// The profile is defined in the shared config or credentials file.
pub(super) fn check_profile(profile: &str, from: &str, env: &Env) -> Result<()> {
    let home = env.home.clone().unwrap_or_default();
    let config = env
        .aws_config_file
        .clone()
        .unwrap_or_else(|| home.join(".aws/config"));
    let credentials = env
        .aws_credentials_file
        .clone()
        .unwrap_or_else(|| home.join(".aws/credentials"));
    let in_file = |path: &Path, prefixed: bool| {
        std::fs::read_to_string(path).is_ok_and(|text| {
            text.lines().any(|line| {
                let Some(name) = line
                    .trim()
                    .strip_prefix('[')
                    .and_then(|l| l.strip_suffix(']'))
                else {
                    return false;
                };
                let name = name.trim();
                let name = match name.strip_prefix("profile ") {
                    Some(n) if prefixed => n.trim(),
                    _ => name,
                };
                name == profile
            })
        })
    };
    if in_file(&config, true) || in_file(&credentials, false) {
        return Ok(());
    }
    bail!(
        "the profile '{profile}' ({from}) is not in {} or {}; add it (aws configure --profile \
         {profile}) or name another",
        config.display(),
        credentials.display()
    )
}

/// The connection of the primary destination: flags, then the
/// environment, then the config file.
/// `log_requests`: `-vv`, one line per request (connections derived from
/// this one, the further destinations', inherit it).
pub fn resolve(
    args: &ConnectionArgs,
    loaded: &Loaded,
    env: &Env,
    log_requests: bool,
) -> Result<Connection> {
    let file = &loaded.file;
    let ssl = file.ssl_enabled.unwrap_or(true);
    let endpoint = match args
        .endpoint
        .clone()
        .or_else(|| env.endpoint_url_s3.clone())
        .or_else(|| env.endpoint_url.clone())
        .or_else(|| file.endpoint.clone())
    {
        Some(e) => Some(endpoint_url(&e, ssl)?),
        None => None,
    };
    let region = [
        (args.region.clone(), "--region".to_string()),
        (env.region.clone(), "AWS_REGION".into()),
        (env.default_region.clone(), "AWS_DEFAULT_REGION".into()),
        (
            file.region.clone(),
            format!("key \"region\" in {}", loaded.describe()),
        ),
    ]
    .into_iter()
    .find_map(|(r, from)| r.filter(|r| !r.trim().is_empty()).map(|r| (r, from)));
    if let (None, Some((r, from))) = (&endpoint, &region) {
        check_aws_region(r, from)?;
    }
    let region = region.map(|(r, _)| r);
    let path_style = if args.path_style {
        true
    } else if args.virtual_host {
        false
    } else {
        file.path_style
            .or(file.s3_force_path_style)
            .unwrap_or(endpoint.is_some())
    };
    // An explicit --profile beats keys in the file (flags win); otherwise
    // the file's keys are used before the AWS chain, as node-s3ma did.
    let credentials = match (&file.access_key_id, &file.secret_access_key) {
        _ if args.profile.is_some() => None,
        (Some(id), Some(secret)) => Some(StaticCredentials {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: file.session_token.clone(),
        }),
        (Some(_), None) | (None, Some(_)) => bail!(
            "{} has only one of accessKeyId and secretAccessKey; give both, or neither to use \
             the AWS credential chain",
            loaded.describe()
        ),
        (None, None) => None,
    };
    let profile = [
        (args.profile.clone(), "--profile"),
        (env.profile.clone(), "AWS_PROFILE"),
        (file.profile.clone(), "key \"profile\""),
    ]
    .into_iter()
    .find_map(|(p, from)| p.map(|p| (p, from)));
    if let (None, Some((p, from))) = (&credentials, &profile) {
        if args.profile.is_some() || !env.access_key_id {
            check_profile(p, from, env)?;
        }
    }
    let keys_from = keys_from(loaded, env, credentials.is_some(), &profile, args);
    let max_attempts = args
        .retries
        .or(file.max_retries.map(|r| r.saturating_add(1)))
        .unwrap_or(5);
    if !(1..=100).contains(&max_attempts) {
        bail!(
            "the number of attempts (--retries, or maxRetries + 1) must be between 1 and 100, \
             not {max_attempts}"
        );
    }
    Ok(Connection {
        endpoint,
        region,
        profile: profile.map(|(p, _)| p),
        profile_only: args.profile.is_some(),
        path_style,
        ca_bundle: ca_bundle(args, loaded, env)?,
        connect_timeout: seconds(
            "the connect timeout",
            args.connect_timeout
                .or(file.connect_timeout)
                .unwrap_or(10.0),
        )?,
        read_timeout: seconds(
            "the read timeout",
            args.read_timeout.or(file.read_timeout).unwrap_or(60.0),
        )?,
        max_attempts,
        credentials,
        keys_from,
        log_requests,
    })
}

/// The CA bundle, checked as the TLS layer will read it: a missing or
/// unusable file is a mistake in the configuration, named with where it
/// was set.
fn ca_bundle(args: &ConnectionArgs, loaded: &Loaded, env: &Env) -> Result<Option<PathBuf>> {
    let Some((path, from)) = [
        (args.ca_bundle.clone(), "--ca-bundle".to_string()),
        (env.ca_bundle.clone(), "AWS_CA_BUNDLE".into()),
        (
            loaded.file.ca_bundle.clone(),
            format!("key \"caBundle\" in {}", loaded.describe()),
        ),
    ]
    .into_iter()
    .find_map(|(p, from)| p.map(|p| (p, from))) else {
        return Ok(None);
    };
    crate::store::tls::Bundle::read(&path).with_context(|| format!("given by {from}"))?;
    Ok(Some(path))
}

/// Where the keys the server will see come from, said so the user knows
/// what to fix.
fn keys_from(
    loaded: &Loaded,
    env: &Env,
    from_file: bool,
    profile: &Option<(String, &str)>,
    args: &ConnectionArgs,
) -> String {
    if from_file {
        let mut s = format!("accessKeyId/secretAccessKey in {}", loaded.describe());
        if loaded.found_in_cwd {
            s.push_str(
                ", read because it is in the current directory (name another with --config)",
            );
        }
        if env.access_key_id {
            s.push_str("; they take precedence over AWS_ACCESS_KEY_ID in the environment");
        }
        return s;
    }
    match profile {
        Some((p, from)) if args.profile.is_some() || !env.access_key_id => {
            format!("the profile '{p}' ({from})")
        }
        _ if env.access_key_id => {
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment".into()
        }
        _ => "the AWS credential chain (environment, ~/.aws, instance role)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_endpoints_name_their_region() {
        for (url, want) in [
            ("https://s3-eu-west-1.amazonaws.com", Some("eu-west-1")),
            (
                "https://s3.ap-northeast-1.amazonaws.com/",
                Some("ap-northeast-1"),
            ),
            (
                "https://s3.dualstack.us-east-2.amazonaws.com",
                Some("us-east-2"),
            ),
            ("https://s3.amazonaws.com", Some("us-east-1")),
            ("https://s3.isk01.sakurastorage.jp", None),
            ("http://127.0.0.1:9000", None),
            ("https://bucket.s3.amazonaws.com.evil.example", None),
            ("https://s3-accelerate.amazonaws.com", None),
            ("https://s3-website-us-east-1.amazonaws.com", None),
            (
                "https://s3.us-gov-west-1.amazonaws.com",
                Some("us-gov-west-1"),
            ),
        ] {
            assert_eq!(aws_region_of(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn endpoints_without_scheme_are_https() {
        assert_eq!(
            endpoint_url("b.storage.example.jp", true).expect("ok"),
            "https://b.storage.example.jp"
        );
        assert_eq!(endpoint_url("h:9000/", false).expect("ok"), "http://h:9000");
        assert_eq!(
            endpoint_url("http://127.0.0.1:9000", true).expect("ok"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            endpoint_url("http://[::1]:9000", true).expect("ok"),
            "http://[::1]:9000"
        );
        assert!(endpoint_url("ftp://x", true).is_err());
        assert_eq!(endpoint_url("HTTP://h:1", true).expect("ok"), "http://h:1");
    }

    #[test]
    fn a_password_in_an_endpoint_is_never_shown() {
        let err =
            endpoint_url("http://AKIAUSER:SECRETPW@127.0.0.1:9000", true).expect_err("user info");
        let msg = err.to_string();
        assert!(
            !msg.contains("SECRETPW") && !msg.contains("AKIAUSER"),
            "{msg}"
        );
        assert!(msg.contains("write it as http://127.0.0.1:9000"), "{msg}");
    }

    #[test]
    fn ports_out_of_range_are_refused() {
        for bad in [
            "http://127.0.0.1:99999",
            "http://127.0.0.1:0",
            "http://h:port",
            "http://h:",
            "http://:9000",
            "http://[::1",
            "http://127.0.0.1:018114",
            "http://h:1?x=1",
            "http://h :1",
        ] {
            let err = endpoint_url(bad, true).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn regions_without_an_endpoint_must_be_aws() {
        for ok in [
            "ap-northeast-1",
            "us-gov-west-1",
            "eusc-de-east-1",
            "xx-new-9",
        ] {
            assert!(check_aws_region(ok, "test").is_ok(), "{ok}");
        }
        let err = check_aws_region("ap-northeast1", "key \"region\"").expect_err("2014 spelling");
        assert!(
            err.to_string().contains("did you mean ap-northeast-1?"),
            "{err}"
        );
        for bad in ["auto", "garage", "tokyo", "US-EAST-1"] {
            assert!(check_aws_region(bad, "test").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_profile_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("config"),
            "[default]\nregion = x\n[profile work]\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("credentials"), "[home]\n").expect("write");
        let env = Env {
            aws_config_file: Some(dir.path().join("config")),
            aws_credentials_file: Some(dir.path().join("credentials")),
            ..Env::default()
        };
        for ok in ["default", "work", "home"] {
            assert!(check_profile(ok, "--profile", &env).is_ok(), "{ok}");
        }
        let err = check_profile("nosuch", "--profile", &env).expect_err("missing");
        assert!(err.to_string().contains("'nosuch'"), "{err}");
        assert!(err.to_string().contains("credentials"), "{err}");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = StaticCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("tok".into()),
        };
        let s = format!("{c:?}");
        assert!(!s.contains("wJalrXUtnFEMI") && !s.contains("tok\""), "{s}");
    }
}
