//! `s3ma ls`: buckets with their creation dates, or the objects and common
//! prefixes under `s3://bucket/prefix`, page by page (memory does not grow
//! with the listing).

use std::io::Write;

use anyhow::{Context, Result};
use aws_smithy_types::DateTime;
use serde_json::json;

use crate::keys::Location;
use crate::report::{printable, utc_secs};
use crate::store::{ObjectInfo, Store};

/// ISO 8601 in UTC, to the second: `2026-11-26T16:00:00Z`.
fn iso(dt: Option<&DateTime>) -> String {
    dt.map_or_else(|| "-".into(), |d| utc_secs(d.secs()))
}

/// ISO 8601 in UTC with the milliseconds the server keeps
/// (`2026-11-26T16:00:00.700Z`): times to give `--at`.
fn iso_ms(dt: Option<&DateTime>) -> String {
    match dt {
        Some(d) if d.subsec_nanos() >= 1_000_000 => {
            let s = utc_secs(d.secs());
            format!(
                "{}.{:03}Z",
                s.trim_end_matches('Z'),
                d.subsec_nanos() / 1_000_000
            )
        }
        _ => iso(dt),
    }
}

/// `2026-11-26 16:00:00` (UTC), like `aws s3 ls`.
fn short(dt: Option<&DateTime>) -> String {
    let s = iso(dt);
    if s.len() >= 19 && s != "-" {
        s[..19].replace('T', " ")
    } else {
        format!("{s:19}")
    }
}

pub async fn buckets(store: &Store, json_out: bool) -> Result<()> {
    let list = store
        .list_buckets()
        .await
        .with_context(|| format!("cannot list buckets at {}", store.endpoint()))?;
    let mut out = std::io::stdout().lock();
    for b in &list {
        let created = iso(b.created.as_ref());
        if json_out {
            writeln!(out, "{}", json!({"bucket": b.name, "created": created}))?;
        } else {
            writeln!(out, "{created:<20}  {}", printable(&b.name))?;
        }
    }
    Ok(())
}

/// Lists the objects under a prefix (a folder), one level or all. When the
/// target did not end with `/`, it may also name one object beside the
/// folder (`s3ma ls s3://b/file.txt`, or an object `d1` beside `d1/`):
/// that object is shown too, as aws-cli shows both.
pub async fn objects(
    store: &Store,
    loc: &Location,
    target: &str,
    recursive: bool,
    json_out: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let delimiter = (!recursive).then_some("/");
    let mut lister = store.lister(&loc.bucket, &loc.prefix, delimiter);
    while let Some(page) = lister
        .next_page()
        .await
        .with_context(|| format!("cannot list {loc}"))?
    {
        for p in &page.prefixes {
            let name = if recursive {
                p.as_str()
            } else {
                loc.rel_of(p).unwrap_or(p)
            };
            print_prefix(&mut out, p, name, json_out)?;
        }
        for o in &page.objects {
            let name = if recursive {
                o.key.as_str()
            } else {
                loc.rel_of(&o.key).unwrap_or(&o.key)
            };
            print_object(&mut out, o, name, json_out)?;
        }
    }
    let key = loc.prefix.trim_end_matches('/');
    if !key.is_empty() && !target.ends_with('/') {
        let mut lister = store.lister(&loc.bucket, key, Some("/"));
        while let Some(page) = lister
            .next_page()
            .await
            .with_context(|| format!("cannot list s3://{}/{key}", loc.bucket))?
        {
            // The object named `key` sorts first under it: one page holds it.
            let mut found = false;
            for o in page.objects.iter().filter(|o| o.key == key) {
                found = true;
                let name = if recursive {
                    o.key.as_str()
                } else {
                    o.key.rsplit('/').next().unwrap_or(key)
                };
                print_object(&mut out, o, name, json_out)?;
            }
            if found || !page.objects.is_empty() || !page.prefixes.is_empty() {
                break;
            }
        }
    }
    Ok(())
}

/// `ls --at`: the objects under the prefix as they were at `at`.
pub async fn at(
    store: &Store,
    loc: &Location,
    at: std::time::SystemTime,
    json_out: bool,
) -> Result<()> {
    let items = crate::restore::tree_at(store, loc, at).await?;
    let mut out = std::io::stdout().lock();
    for item in &items {
        if json_out {
            writeln!(
                out,
                "{}",
                json!({"key": item.object.key, "size": item.object.size,
                       "last_modified": iso_ms(item.object.last_modified.as_ref()),
                       "etag": item.object.etag, "version_id": item.version_id})
            )?;
        } else {
            print_object(&mut out, &item.object, &item.object.key, false)?;
        }
    }
    Ok(())
}

/// `ls --versions`: every version and delete marker under the prefix,
/// newest first for each key.
pub async fn versions(store: &Store, loc: &Location, json_out: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut failed = None;
    store
        .versions(&loc.bucket, &loc.prefix, |page| {
            for v in page {
                let o = &v.object;
                let id = v.version_id.as_deref().unwrap_or("null");
                let line = if json_out {
                    json!({"key": o.key, "version_id": id, "size": o.size,
                           "last_modified": iso_ms(o.last_modified.as_ref()), "etag": o.etag,
                           "latest": v.latest, "delete_marker": v.delete_marker})
                    .to_string()
                } else {
                    let what = match (v.delete_marker, v.latest) {
                        (true, true) => " (deleted, latest)",
                        (true, false) => " (deleted)",
                        (false, true) => " (latest)",
                        (false, false) => "",
                    };
                    format!(
                        "{} {:>10} {}  {id}{what}",
                        iso_ms(o.last_modified.as_ref()),
                        if v.delete_marker {
                            "-".to_string()
                        } else {
                            o.size.to_string()
                        },
                        printable(&o.key)
                    )
                };
                if let Err(e) = writeln!(out, "{line}") {
                    failed.get_or_insert(e);
                }
            }
        })
        .await
        .with_context(|| format!("cannot list the versions under {loc}"))?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn print_prefix(out: &mut impl Write, prefix: &str, name: &str, json_out: bool) -> Result<()> {
    if json_out {
        writeln!(out, "{}", json!({"prefix": prefix}))?;
    } else {
        writeln!(out, "{:>30} {}", "DIR", printable(name))?;
    }
    Ok(())
}

fn print_object(out: &mut impl Write, o: &ObjectInfo, name: &str, json_out: bool) -> Result<()> {
    if json_out {
        writeln!(
            out,
            "{}",
            json!({"key": o.key, "size": o.size,
                   "last_modified": iso(o.last_modified.as_ref()), "etag": o.etag})
        )?;
    } else {
        writeln!(
            out,
            "{} {:>10} {}",
            short(o.last_modified.as_ref()),
            o.size,
            printable(name)
        )?;
    }
    Ok(())
}
