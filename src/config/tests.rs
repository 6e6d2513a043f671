//! Resolution as a whole, from a config text and a made-up environment.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::cli::{FilterArgs, TransferArgs};

fn loaded(text: &str) -> Loaded {
    Loaded {
        file: file::parse(text).expect("valid"),
        path: None,
        found_in_cwd: false,
        warnings: Vec::new(),
    }
}

/// An environment with a state directory and nothing else.
fn env() -> Env {
    Env {
        xdg_state_home: Some(std::env::temp_dir()),
        ..Env::default()
    }
}

fn resolve(text: &str, paths: &[&str]) -> Result<Targets> {
    resolve_in(&env(), text, paths)
}

fn resolve_in(env: &Env, text: &str, paths: &[&str]) -> Result<Targets> {
    resolve_warned(env, text, paths, &mut Vec::new())
}

fn resolve_warned(
    env: &Env,
    text: &str,
    paths: &[&str],
    warnings: &mut Vec<String>,
) -> Result<Targets> {
    let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    let (filter, transfer) = (FilterArgs::default(), TransferArgs::default());
    let mut choices = Choices::reading(&paths, &filter, &transfer);
    choices.delete = None;
    targets(
        &choices,
        &ConnectionArgs::default(),
        false,
        &loaded(text),
        env,
        false,
        warnings,
    )
}

#[test]
fn a_node_s3ma_config_is_one_target_per_bucket() {
    // node-s3ma's own example: AWS to AWS in another region, copied.
    let t = resolve(
        r#"{"watchDir": "/tmp", "region": "us-west-2", "bucket": "b-oregon",
            "topPrefix": "backup/", "accessKeyId": "AK", "secretAccessKey": "SK",
            "bucketSync": "b-ireland", "endpointSync": "https://s3-eu-west-1.amazonaws.com"}"#,
        &[],
    )
    .expect("resolves");
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].name, None);
    assert_eq!(t[0].sync.dir, PathBuf::from("/tmp"));
    assert_eq!(
        t[0].sync.dest,
        Location::new("b-oregon", "backup").expect("loc")
    );
    assert_eq!(t[1].name.as_deref(), Some("bucketSync"));
    assert_eq!(
        t[1].sync.dest,
        Location::new("b-ireland", "backup/").expect("loc")
    );
    assert_eq!(t[1].conn.endpoint, None);
    assert_eq!(t[1].conn.region.as_deref(), Some("eu-west-1"));
    assert!(t[1].sync.copy_from.is_some(), "same service: copied");
    assert!(t[0].conn.keys_from.contains("accessKeyId/secretAccessKey"));
}

#[test]
fn bucket_sync_on_another_provider_is_uploaded() {
    let t = resolve(
        r#"{"endpoint": "http://127.0.0.1:9000", "bucket": "b", "bucketSync": "c",
            "topPrefixSync": "copy", "endpointSync": "storage.example.net"}"#,
        &["/tmp"],
    )
    .expect("resolves");
    assert_eq!(
        t[1].conn.endpoint.as_deref(),
        Some("https://storage.example.net")
    );
    assert_eq!(t[1].sync.dest.prefix, "copy/");
    assert!(t[1].sync.copy_from.is_none());
}

#[test]
fn destinations_inherit_the_primary_connection() {
    let aws = tempfile::tempdir().expect("tmp");
    std::fs::write(aws.path().join("config"), "[profile r2]\n").expect("write");
    let env = Env {
        aws_config_file: Some(aws.path().join("config")),
        ..env()
    };
    let t = resolve_in(
        &env,
        r#"{"endpoint": "http://127.0.0.1:9000", "bucket": "b", "topPrefix": "site",
            "accessKeyId": "AK", "secretAccessKey": "SK", "delete": true, "destinations": [
              {"bucket": "same-service"},
              {"bucket": "own-keys", "accessKeyId": "AK2", "secretAccessKey": "SK2"},
              {"name": "far", "bucket": "elsewhere", "endpoint": "https://r2.example",
               "region": "auto", "profile": "r2", "storageClass": "STANDARD_IA"}
            ]}"#,
        &["/tmp"],
    )
    .expect("resolves");
    let names: Vec<Option<&str>> = t.iter().map(|t| t.name.as_deref()).collect();
    assert_eq!(
        names,
        [None, Some("same-service"), Some("own-keys"), Some("far")]
    );
    assert!(
        t[1].sync.copy_from.is_some(),
        "same endpoint and keys: copied"
    );
    assert_eq!(t[1].sync.dest.prefix, "site/");
    assert!(t[2].sync.copy_from.is_none(), "other keys: uploaded");
    assert!(t[2].conn.keys_from.contains("this destination's"));
    let far = &t[3];
    assert!(far.sync.copy_from.is_none());
    assert_eq!(far.conn.region.as_deref(), Some("auto"));
    assert_eq!(far.conn.profile.as_deref(), Some("r2"));
    assert!(far.conn.credentials.is_none());
    assert_eq!(far.sync.dest.bucket, "elsewhere");
    assert_eq!(
        far.sync.transfer.storage_class.as_deref(),
        Some("STANDARD_IA")
    );
    assert!(far.sync.delete);
}

#[test]
fn clashing_destinations_are_refused() {
    for (entries, want) in [
        (
            r#"{"bucket": "b", "prefix": "site/inner"}"#,
            "overlaps the primary",
        ),
        (r#"{"bucket": "b", "prefix": ""}"#, "overlaps the primary"),
        (
            r#"{"bucket": "c"}, {"bucket": "c", "name": "x"}"#,
            "overlaps destination",
        ),
        (
            r#"{"bucket": "c"}, {"bucket": "d", "name": "c"}"#,
            "two destinations are named",
        ),
        (
            r#"{"bucket": "c", "accessKeyId": "AK"}"#,
            "only one of accessKeyId",
        ),
        (r#"{"bucket": "c", "name": " "}"#, "empty or unprintable"),
        (r#"{"bucket": "c", "prefix": "a/../b"}"#, "a '..' segment"),
    ] {
        let err = resolve(
            &format!(
                r#"{{"endpoint": "http://127.0.0.1:9000", "bucket": "b", "topPrefix": "site",
                    "destinations": [{entries}]}}"#
            ),
            &["/tmp"],
        )
        .expect_err(entries);
        assert!(format!("{err:#}").contains(want), "{entries}: {err:#}");
    }
    // The same bucket and prefix on another server is no clash.
    assert!(resolve(
        r#"{"endpoint": "http://127.0.0.1:9000", "bucket": "b",
            "destinations": [{"bucket": "b", "endpoint": "http://127.0.0.1:9001"}]}"#,
        &["/tmp"],
    )
    .is_ok());
    let err = file::parse(r#"{"destinations": [{"bucket": "c", "bukcet": "d"}]}"#)
        .expect_err("unknown field");
    assert!(format!("{err:#}").contains("destinations[0]"), "{err:#}");
}

#[test]
fn another_destination_on_the_command_line_leaves_the_files_out() {
    let mut warnings = Vec::new();
    let t = resolve_warned(
        &env(),
        r#"{"endpoint": "http://h:1", "bucket": "b", "bucketSync": "c"}"#,
        &["/tmp", "s3://other/x"],
        &mut warnings,
    )
    .expect("resolves");
    assert_eq!(t.len(), 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn bucket_names_follow_the_service_rules() {
    let err =
        resolve(r#"{"region": "us-east-1"}"#, &["/tmp", "s3://BAD/x"]).expect_err("AWS rules");
    assert!(err.to_string().contains("on AWS S3"), "{err}");
    let err = resolve(r#"{"region": "us-east-1"}"#, &["/tmp", "s3://b/x"]).expect_err("short");
    assert!(err.to_string().contains("3 to 63"), "{err}");
    // A custom endpoint with path-style URLs decides for itself.
    assert!(resolve(r#"{"endpoint": "http://h:1"}"#, &["/tmp", "s3://BAD/x"]).is_ok());
    let err = resolve(
        r#"{"endpoint": "http://h:1", "pathStyle": false}"#,
        &["/tmp", "s3://Bad_Name/x"],
    )
    .expect_err("virtual host");
    assert!(err.to_string().contains("virtual-host"), "{err}");
}

#[test]
fn the_region_must_be_an_aws_one_without_an_endpoint() {
    let err = resolve(r#"{"region": "ap-northeast1"}"#, &["/tmp", "s3://bucket/x"])
        .expect_err("2014 spelling");
    let msg = err.to_string();
    assert!(msg.contains("did you mean ap-northeast-1?"), "{msg}");
    assert!(msg.contains("key \"region\""), "{msg}");
    // With an endpoint, the provider's own names are fine.
    assert!(resolve(
        r#"{"region": "garage", "endpoint": "http://h:1"}"#,
        &["/tmp", "s3://bucket/x"]
    )
    .is_ok());
}

#[test]
fn aws_storage_classes_are_checked() {
    let err = resolve(
        r#"{"region": "us-east-1", "storageClass": "STANDARD_AI"}"#,
        &["/tmp", "s3://bucket/x"],
    )
    .expect_err("unknown class");
    assert!(
        err.to_string().contains("did you mean STANDARD_IA?"),
        "{err}"
    );
    assert!(resolve(
        r#"{"region": "us-east-1", "storageClass": "GLACIER_IR"}"#,
        &["/tmp", "s3://bucket/x"]
    )
    .is_ok());
    // Other providers have their own classes.
    assert!(resolve(
        r#"{"endpoint": "http://h:1", "storageClass": "COLD"}"#,
        &["/tmp", "s3://bucket/x"]
    )
    .is_ok());
}

#[test]
fn a_destination_s_region_and_profile_are_checked_too() {
    let err = resolve(
        r#"{"region": "us-east-1", "bucket": "bucket",
            "destinations": [{"bucket": "other", "region": "ap-northeast1"}]}"#,
        &["/tmp"],
    )
    .expect_err("region");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("destinations[0]") && msg.contains("ap-northeast-1?"),
        "{msg}"
    );
    let err = resolve(
        r#"{"endpoint": "http://h:1", "bucket": "bucket",
            "destinations": [{"bucket": "other", "profile": "nosuch"}]}"#,
        &["/tmp"],
    )
    .expect_err("profile");
    assert!(format!("{err:#}").contains("'nosuch'"), "{err:#}");
}

#[test]
fn trust_state_has_a_full_check_interval() {
    let t = resolve(
        r#"{"endpoint": "http://h:1", "trustState": true}"#,
        &["/tmp", "s3://b/x"],
    )
    .expect("resolves");
    assert_eq!(t[0].sync.trust_state, Some(Duration::from_secs(86_400)));
    let t = resolve(
        r#"{"endpoint": "http://h:1", "trustState": true, "fullCheckEvery": "6h"}"#,
        &["/tmp", "s3://b/x"],
    )
    .expect("resolves");
    assert_eq!(t[0].sync.trust_state, Some(Duration::from_secs(6 * 3600)));
    let t = resolve(r#"{"endpoint": "http://h:1"}"#, &["/tmp", "s3://b/x"]).expect("resolves");
    assert_eq!(t[0].sync.trust_state, None);
    assert!(resolve(
        r#"{"endpoint": "http://h:1", "trustState": true, "fullCheckEvery": 0}"#,
        &["/tmp", "s3://b/x"]
    )
    .is_err());
}

#[test]
fn at_takes_rfc3339_with_any_offset_and_ages_and_refuses_the_future() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let at = |s: &str| super::parse_at(s).map(|t| t.duration_since(UNIX_EPOCH).expect("after"));
    // To the second: the whole second.
    let z = at("2026-11-30T18:00:00Z").expect("Z");
    assert_eq!(z, Duration::new(1_796_061_600, 999_999_999));
    assert_eq!(at("2026-11-30T20:00:00+02:00").expect("+02:00"), z);
    assert_eq!(at("2026-11-30T18:00:00-00:00").expect("-00:00"), z);
    assert_eq!(at("2026-11-30t13:30:00-04:30").expect("lower case"), z);
    assert_eq!(
        at("2026-11-30T18:00:00.5Z").expect("fraction"),
        Duration::new(1_796_061_600, 500_000_000)
    );
    let two_hours = SystemTime::now() - Duration::from_secs(7200);
    let got = super::parse_at("2h").expect("age");
    assert!(got <= two_hours + Duration::from_secs(5) && got + Duration::from_secs(5) >= two_hours);
    for bad in [
        "yesterday",
        "2026-11-30",
        "2026-11-30T18:00:00+25:00",
        "2999-01-01T00:00:00Z",
    ] {
        assert!(super::parse_at(bad).is_err(), "{bad}");
    }
}
