//! Headers by pattern: the first matching rule sets an object's headers;
//! a rule that changes reaches the objects already there by a copy onto
//! themselves, not an upload.

use crate::harness::*;

/// Cache-Control, Content-Type and Content-Encoding of an object.
fn served(b: &Bucket, key: &str) -> (Option<String>, Option<String>, Option<String>) {
    let h = b.head_all(key);
    let text = |s: Option<&str>| s.map(str::to_string);
    (
        text(h.cache_control()),
        text(h.content_type()),
        text(h.content_encoding()),
    )
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[test]
fn header_rules_set_headers_and_a_changed_rule_is_a_copy_not_an_upload() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("index.html", "<h1>home</h1>");
        env.write("about/index.html", "<h1>about</h1>");
        env.write("assets/app.1234.js", "console.log(1)");
        env.write("data/log.txt.gz", "not really gzip");
        env.write("plain.txt", "plain");
        let config = env.work().join("config.json");
        let rules = |assets: &str| {
            format!(
                r#"{{"headers": [
                    {{"match": "/assets/", "cacheControl": "{assets}"}},
                    {{"match": "*.gz", "contentEncoding": "gzip", "contentType": "text/plain"}}
                ]}}"#
            )
        };
        std::fs::write(&config, rules("max-age=31536000, immutable")).expect("config");
        let config = config.display().to_string();
        // The flag's rule comes before the file's.
        let html = ["--header", "*.html=Cache-Control: no-cache"];
        let first = env.sync(&[&["--config", &config][..], &html].concat()).ok();
        assert_eq!(first.summary()["uploaded"], 5, "{kind:?}: {first}");
        let b = env.primary();
        let p = &env.prefix;
        for key in ["index.html", "about/index.html"] {
            let (cc, ct, _) = served(&b, &format!("{p}{key}"));
            assert_eq!(
                (cc, ct),
                (some("no-cache"), some("text/html")),
                "{kind:?} {key}"
            );
        }
        let (cc, _, _) = served(&b, &format!("{p}assets/app.1234.js"));
        assert_eq!(cc, some("max-age=31536000, immutable"), "{kind:?}");
        let (cc, ct, ce) = served(&b, &format!("{p}data/log.txt.gz"));
        assert_eq!(
            (cc, ct, ce),
            (None, some("text/plain"), some("gzip")),
            "{kind:?}"
        );
        let (cc, _, ce) = served(&b, &format!("{p}plain.txt"));
        assert_eq!((cc, ce), (None, None), "{kind:?}");
        // The same rules again: nothing to do.
        let again = env.sync(&[&["--config", &config][..], &html].concat()).ok();
        assert_eq!(again.summary()["copied"], 0, "{kind:?}: {again}");
        assert_eq!(again.summary()["uploaded"], 0, "{kind:?}: {again}");
        // A changed rule, a dropped one: copies onto themselves.
        std::fs::write(&config, rules("max-age=60")).expect("config");
        let changed = env.sync(&["--config", &config]).ok();
        assert_eq!(changed.summary()["uploaded"], 0, "{kind:?}: {changed}");
        let mut restyled = changed.actions("headers");
        restyled.sort();
        let want: Vec<String> = ["about/index.html", "assets/app.1234.js", "index.html"]
            .iter()
            .map(|k| format!("{p}{k}"))
            .collect();
        assert_eq!(restyled, want, "{kind:?}: {changed}");
        let (cc, _, _) = served(&b, &format!("{p}assets/app.1234.js"));
        assert_eq!(cc, some("max-age=60"), "{kind:?}");
        let (cc, ct, _) = served(&b, &format!("{p}index.html"));
        assert_eq!((cc, ct), (None, some("text/html")), "{kind:?}");
        env.converge(std::time::Duration::ZERO, &|| changed.to_string());
        env.assert_md5chksum(&env.tree(), &|| changed.to_string());
        // verify checks the headers against the rules it is given.
        let tree = env.tree().display().to_string();
        let dest = env.dest();
        env.s3ma(&["verify", &tree, &dest, "--config", &config])
            .ok();
        let off = ["--header", "*.html=Cache-Control: private"];
        let run = env.s3ma(
            &[
                &["verify", &tree, &dest, "--config", &config, "--json"][..],
                &off,
            ]
            .concat(),
        );
        assert_eq!(run.code, 1, "{kind:?}: {run}");
        let mut differ = run.actions("differ");
        differ.sort();
        assert_eq!(
            differ,
            [format!("{p}about/index.html"), format!("{p}index.html")],
            "{kind:?}: {run}"
        );
        assert!(
            run.stdout
                .contains("headers: Cache-Control none in the bucket, 'private' by the rules"),
            "{kind:?}: {run}"
        );
    }
}

#[test]
fn a_bad_header_rule_is_a_usage_error_naming_it() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    let run = env
        .sync(&["--header", "*.html=X-Frame-Options: deny"])
        .code(2);
    assert!(
        run.all()
            .contains("does not set the header 'x-frame-options'"),
        "{run}"
    );
    let config = env.work().join("config.json");
    std::fs::write(&config, r#"{"headers": [{"match": "*", "acl": "public"}]}"#).expect("w");
    let run = env
        .sync(&["--config", &config.display().to_string()])
        .code(2);
    assert!(run.all().contains("not a canned ACL"), "{run}");
    assert!(env.listing().is_empty());
}

#[test]
fn watch_uploads_with_the_rules_headers() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("start.txt", "start");
        let mut w = env.watch(&["--header", "*.css=Cache-Control: max-age=600"]);
        w.ready();
        env.write("site.css", "body {}");
        env.converge(std::time::Duration::from_secs(60), &|| w.logs());
        let (cc, ct, _) = served(&env.primary(), &format!("{}site.css", env.prefix));
        assert_eq!(
            (cc, ct),
            (some("max-age=600"), some("text/css")),
            "{kind:?}"
        );
        assert_eq!(w.term(), 0, "{kind:?}: {}", w.logs());
    }
}

#[test]
fn objects_written_by_a_run_that_did_not_complete_get_the_rules_again() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        for i in 0..5 {
            env.write(&format!("p{i}.html"), format!("page {i}"));
        }
        let rule = |v: &str| format!("*.html=Cache-Control: {v}");
        env.sync(&["--header", &rule("A")]).ok();
        // A run with rule B that does not complete (a name too long for a
        // key fails it), then rule A again: what B wrote goes back to A.
        let long = ["n", "m", "o", "p", "q"].map(|c| c.repeat(250)).join("/");
        env.write(&format!("{long}/x.html"), "no key can hold this");
        let partial = env.sync(&["--header", &rule("B")]).code(1);
        assert_eq!(partial.actions("headers").len(), 5, "{kind:?}: {partial}");
        std::fs::remove_dir_all(env.tree().join("n".repeat(250))).expect("rm");
        let back = env.sync(&["--header", &rule("A")]).ok();
        assert_eq!(back.actions("headers").len(), 5, "{kind:?}: {back}");
        let b = env.primary();
        for i in 0..5 {
            let (cc, _, _) = served(&b, &format!("{}p{i}.html", env.prefix));
            assert_eq!(cc, some("A"), "{kind:?} p{i}");
        }
        // Complete again: the next run is a no-op.
        let again = env.sync(&["--header", &rule("A")]).ok();
        assert_eq!(again.summary()["copied"], 0, "{kind:?}: {again}");
        // A dry run says what it would do, as the real run names it.
        let dry = env.sync(&["--header", &rule("C"), "--dry-run"]).ok();
        assert_eq!(dry.actions("headers").len(), 5, "{kind:?}: {dry}");
        assert_eq!(dry.summary()["uploaded"], 0, "{kind:?}: {dry}");
    }
}

#[test]
fn a_new_state_database_copies_headers_instead_of_uploading_again() {
    for kind in KINDS {
        let env = TestEnv::new(kind);
        env.write("index.html", "home");
        env.write("big.bin", vec![3u8; 6 << 20]);
        env.sync(&["--multipart-threshold", "5MiB"]).ok();
        // The state database is lost; the rules are new.
        std::fs::remove_dir_all(env.state_dir()).expect("rm state");
        let rules = [
            "--header",
            "*=Cache-Control: max-age=60",
            "--multipart-threshold",
            "5MiB",
        ];
        let run = env.sync(&rules).ok();
        assert_eq!(run.summary()["uploaded"], 0, "{kind:?}: {run}");
        assert_eq!(run.actions("headers").len(), 2, "{kind:?}: {run}");
        // --checksum hashes, then copies too.
        let checked = env
            .sync(&["--header", "*=Cache-Control: max-age=90", "--checksum"])
            .ok();
        assert_eq!(checked.summary()["uploaded"], 0, "{kind:?}: {checked}");
        assert_eq!(checked.actions("headers").len(), 2, "{kind:?}: {checked}");
        let (cc, _, _) = served(&env.primary(), &format!("{}big.bin", env.prefix));
        assert_eq!(cc, some("max-age=90"), "{kind:?}");
    }
}
