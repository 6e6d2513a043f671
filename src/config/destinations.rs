//! Further destinations: node-s3ma's `bucketSync` and the `destinations`
//! list, each resolved against the primary's connection.

use anyhow::{anyhow, bail, Context, Result};

use super::connection::{
    check_aws_region, check_profile, endpoint_url, same_account, service, set_endpoint, Connection,
    StaticCredentials,
};
use super::env::Env;
use super::file::FileConfig;
use crate::keys::Location;

/// A further bucket every object is mirrored to: node-s3ma's `bucketSync`,
/// or an entry of `destinations`.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Shown before its log lines (`[name] upload …`).
    pub name: String,
    pub conn: Connection,
    pub dest: Location,
    pub storage_class: Option<String>,
    /// Its own upload limit (else it shares the run's).
    pub bwlimit: Option<std::sync::Arc<crate::bwlimit::Throttle>>,
    /// Its own `backupPrefix`, on its service.
    pub backup: Option<super::mirror::Backup>,
    /// Same service and credentials as the primary: objects are copied
    /// from the primary on the server instead of uploaded again.
    pub copy_from_primary: bool,
}

/// The destinations beyond the primary (`conn`, `primary`): node-s3ma's
/// `bucketSync` first, then the `destinations` list.
pub fn resolve(
    conn: &Connection,
    primary: &Location,
    file: &FileConfig,
    env: &Env,
) -> Result<Vec<Destination>> {
    let ssl = file.ssl_enabled.unwrap_or(true);
    let mut out: Vec<Destination> = Vec::new();
    if let Some(bucket) = &file.bucket_sync {
        let mut c = conn.clone();
        if let Some(e) = &file.endpoint_sync {
            let url = endpoint_url(e, ssl).context("in the config key \"endpointSync\"")?;
            set_endpoint(&mut c, url, None);
        }
        let (prefix, key) = match file.top_prefix_sync.as_deref() {
            Some(p) => (p, "topPrefixSync"),
            None => (primary.prefix.as_str(), "bucketSync"),
        };
        out.push(Destination {
            name: "bucketSync".into(),
            dest: Location::new(bucket, prefix)
                .with_context(|| format!("in the config key \"{key}\""))?,
            copy_from_primary: service(&c) == service(conn),
            conn: c,
            storage_class: None,
            bwlimit: None,
            backup: None,
        });
    }
    for (i, d) in file.destinations.iter().flatten().enumerate() {
        let at = || format!("in destinations[{i}] of the config file");
        let timestamp = file.backup_timestamp.unwrap_or(false);
        out.push(entry(conn, primary, d, ssl, timestamp, env).with_context(at)?);
    }
    check_apart(conn, primary, &out)?;
    Ok(out)
}

/// One entry of `destinations`.
fn entry(
    conn: &Connection,
    primary: &Location,
    d: &super::file::DestinationFile,
    ssl: bool,
    timestamp: bool,
    env: &Env,
) -> Result<Destination> {
    let mut c = conn.clone();
    if let Some(e) = &d.endpoint {
        let url = endpoint_url(e, ssl)?;
        set_endpoint(&mut c, url, d.path_style);
    } else if let Some(p) = d.path_style {
        c.path_style = p;
    }
    if let Some(r) = d.region.as_deref().filter(|r| !r.trim().is_empty()) {
        if c.endpoint.is_none() {
            check_aws_region(r, "its key \"region\"")?;
        }
        c.region = Some(r.to_string());
    }
    match (&d.access_key_id, &d.secret_access_key, &d.profile) {
        (Some(id), Some(secret), _) => {
            c.credentials = Some(StaticCredentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: d.session_token.clone(),
            });
            c.profile = None;
            c.profile_only = false;
            c.keys_from = "this destination's accessKeyId/secretAccessKey".into();
        }
        (Some(_), None, _) | (None, Some(_), _) => bail!(
            "only one of accessKeyId and secretAccessKey is given; give both, a profile, or \
             neither to use the primary's credentials"
        ),
        (None, None, Some(profile)) => {
            check_profile(profile, "its key \"profile\"", env)?;
            c.credentials = None;
            c.profile = Some(profile.clone());
            c.profile_only = true;
            c.keys_from = format!("this destination's profile '{profile}'");
        }
        (None, None, None) => {}
    }
    let dest = Location::new(&d.bucket, d.prefix.as_deref().unwrap_or(&primary.prefix))?;
    let name = match &d.name {
        Some(n) if n.trim().is_empty() || n.chars().any(char::is_control) => {
            return Err(anyhow!("the name \"{n}\" is empty or unprintable"))
        }
        Some(n) => n.clone(),
        None => d.bucket.clone(),
    };
    Ok(Destination {
        name,
        copy_from_primary: service(&c) == service(conn) && same_account(&c, conn),
        conn: c,
        dest,
        storage_class: d.storage_class.clone(),
        bwlimit: d
            .bwlimit
            .as_deref()
            .map(crate::bwlimit::Throttle::parse)
            .transpose()
            .context("in its key \"bwlimit\"")?
            .flatten(),
        backup: d
            .backup_prefix
            .as_deref()
            .map(|url| super::mirror::Backup::parse(url, timestamp, "its key \"backupPrefix\""))
            .transpose()?,
    })
}

/// No two destinations share a name, or a bucket and overlapping prefixes
/// on one service: one would delete the other's objects.
fn check_apart(conn: &Connection, primary: &Location, out: &[Destination]) -> Result<()> {
    for (i, d) in out.iter().enumerate() {
        if out[..i].iter().any(|o| o.name == d.name) {
            bail!(
                "two destinations are named \"{}\"; give each a different \"name\"",
                d.name
            );
        }
        let clash = |other: &Location, other_conn: &Connection| {
            service(other_conn) == service(&d.conn)
                && other.bucket == d.dest.bucket
                && (other.prefix.starts_with(&d.dest.prefix)
                    || d.dest.prefix.starts_with(&other.prefix))
        };
        let taken = if clash(primary, conn) {
            Some(format!("the primary {primary}"))
        } else {
            out[..i]
                .iter()
                .find(|o| clash(&o.dest, &o.conn))
                .map(|o| format!("destination \"{}\" ({})", o.name, o.dest))
        };
        if let Some(taken) = taken {
            bail!(
                "destination \"{}\" ({}) overlaps {taken}: one would delete the other's \
                 objects; give it another bucket or a prefix outside it",
                d.name,
                d.dest
            );
        }
    }
    Ok(())
}
