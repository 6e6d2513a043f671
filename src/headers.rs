//! Headers by pattern: rules that set, for the files a gitignore-style
//! pattern matches, the HTTP headers their objects are served with
//! (`Cache-Control`, `Content-Type`, …), their storage class and a canned
//! ACL. The first rule that matches a path wins; paths no rule matches get
//! the defaults (the guessed Content-Type, the run's storage class).
//!
//! The rules of the last complete run are kept in the state database.
//! When they differ from this run's for a path, the object gets the new
//! headers by a server-side copy onto itself with its metadata replaced:
//! no upload.

use anyhow::{bail, Context, Result};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use serde::{Deserialize, Serialize};

/// What a rule sets. Each field left out keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderSet {
    pub cache_control: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub storage_class: Option<String>,
    pub acl: Option<String>,
}

impl HeaderSet {
    fn values_mut(&mut self) -> impl Iterator<Item = &mut String> {
        [
            &mut self.cache_control,
            &mut self.content_type,
            &mut self.content_encoding,
            &mut self.content_disposition,
            &mut self.content_language,
            &mut self.storage_class,
            &mut self.acl,
        ]
        .into_iter()
        .flatten()
    }
}

/// One rule as written in the config file (`headers`), and as kept in the
/// state database: `{"match": PATTERN, …what it sets}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// A gitignore-style pattern, relative to the mirrored directory.
    pub pattern: String,
    pub set: HeaderSet,
}

/// [`RuleSpec`] as JSON: one object, unknown keys refused (serde cannot
/// refuse them through a flattened struct).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleJson {
    #[serde(rename = "match")]
    pattern: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_disposition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acl: Option<String>,
}

impl<'de> Deserialize<'de> for RuleSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = RuleJson::deserialize(d)?;
        Ok(RuleSpec {
            pattern: j.pattern,
            set: HeaderSet {
                cache_control: j.cache_control,
                content_type: j.content_type,
                content_encoding: j.content_encoding,
                content_disposition: j.content_disposition,
                content_language: j.content_language,
                storage_class: j.storage_class,
                acl: j.acl,
            },
        })
    }
}

impl Serialize for RuleSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = self.set.clone();
        RuleJson {
            pattern: self.pattern.clone(),
            cache_control: h.cache_control,
            content_type: h.content_type,
            content_encoding: h.content_encoding,
            content_disposition: h.content_disposition,
            content_language: h.content_language,
            storage_class: h.storage_class,
            acl: h.acl,
        }
        .serialize(s)
    }
}

/// The canned ACLs S3 knows.
const ACLS: [&str; 7] = [
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

/// The compiled rules, in order.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    specs: Vec<RuleSpec>,
    matchers: Vec<Gitignore>,
}

impl Rules {
    pub fn new(mut specs: Vec<RuleSpec>) -> Result<Rules> {
        let mut matchers = Vec::with_capacity(specs.len());
        for spec in &mut specs {
            let p = spec.pattern.trim();
            if p.is_empty() || p.starts_with('#') || p.starts_with('!') {
                bail!(
                    "the header pattern '{}' can match no file: a pattern is a path or glob \
                     such as *.html or /assets/ (no comments, and no '!': put a rule for the \
                     exceptions before the general one, as the first match wins)",
                    spec.pattern
                );
            }
            spec.pattern = p.to_string();
            for value in spec.set.values_mut() {
                *value = value.trim().to_string();
            }
            let mut b = GitignoreBuilder::new("");
            b.add_line(None, &spec.pattern)
                .with_context(|| format!("invalid header pattern '{}'", spec.pattern))?;
            matchers.push(b.build().context("cannot compile the header patterns")?);
            check(spec)?;
        }
        Ok(Rules { specs, matchers })
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The storage classes the rules give, with their patterns.
    pub fn storage_classes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.specs
            .iter()
            .filter_map(|s| Some((s.pattern.as_str(), s.set.storage_class.as_deref()?)))
    }

    /// What the first rule matching `rel` (a `/` path relative to the
    /// mirrored directory) sets; empty when none matches.
    pub fn for_rel(&self, rel: &str) -> HeaderSet {
        self.specs
            .iter()
            .zip(&self.matchers)
            .find(|(_, m)| m.matched_path_or_any_parents(rel, false).is_ignore())
            .map(|(s, _)| s.set.clone())
            .unwrap_or_default()
    }

    /// The rules as kept in the state database.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.specs).unwrap_or_default()
    }

    /// The rules kept by an earlier run; none when nothing was kept (a run
    /// before any rule) or it cannot be read.
    pub fn from_json(text: Option<&str>) -> Rules {
        text.and_then(|t| serde_json::from_str::<Vec<RuleSpec>>(t).ok())
            .and_then(|specs| Rules::new(specs).ok())
            .unwrap_or_default()
    }
}

/// How an object's headers (`got`, from a HEAD) differ from `want`, what
/// the rules and defaults give it (its Content-Type filled in): one phrase
/// per header. The storage class counts only when a rule sets it (servers
/// leave out STANDARD), the ACL not at all (HEAD does not show it).
pub fn differences(want: &HeaderSet, got: &HeaderSet) -> Vec<String> {
    let shown = |v: &Option<String>| {
        v.as_deref()
            .map_or("none".to_string(), |s| format!("'{s}'"))
    };
    let mut out = Vec::new();
    for (name, w, g) in [
        ("Cache-Control", &want.cache_control, &got.cache_control),
        ("Content-Type", &want.content_type, &got.content_type),
        (
            "Content-Encoding",
            &want.content_encoding,
            &got.content_encoding,
        ),
        (
            "Content-Disposition",
            &want.content_disposition,
            &got.content_disposition,
        ),
        (
            "Content-Language",
            &want.content_language,
            &got.content_language,
        ),
    ] {
        if w != g {
            out.push(format!(
                "{name} {} in the bucket, {} by the rules",
                shown(g),
                shown(w)
            ));
        }
    }
    if let Some(w) = &want.storage_class {
        let g = got.storage_class.as_deref().unwrap_or("STANDARD");
        if w != g {
            out.push(format!(
                "storage class '{g}' in the bucket, '{w}' by the rules"
            ));
        }
    }
    out
}

/// A rule's values must be sendable as headers, and its ACL one S3 knows.
fn check(spec: &RuleSpec) -> Result<()> {
    let s = &spec.set;
    for (name, value) in [
        ("cacheControl", &s.cache_control),
        ("contentType", &s.content_type),
        ("contentEncoding", &s.content_encoding),
        ("contentDisposition", &s.content_disposition),
        ("contentLanguage", &s.content_language),
        ("storageClass", &s.storage_class),
        ("acl", &s.acl),
    ] {
        if let Some(v) = value {
            if v.is_empty() {
                bail!(
                    "the header rule for '{}' gives {name} an empty value; give one or leave \
                     the key out",
                    spec.pattern
                );
            }
            if let Some(c) = v.chars().find(|c| c.is_control() || !c.is_ascii()) {
                let what = if c.is_control() {
                    format!("a control character (U+{:04X})", c as u32)
                } else {
                    format!("'{c}' (U+{:04X}), which is not ASCII", c as u32)
                };
                bail!(
                    "the header rule for '{}' gives {name} a value that holds {what}: a \
                     header value must be printable ASCII",
                    spec.pattern
                );
            }
        }
    }
    if let Some(acl) = &s.acl {
        if !ACLS.contains(&acl.as_str()) {
            bail!(
                "the header rule for '{}' gives the ACL '{acl}', which is not a canned ACL; \
                 use one of {}",
                spec.pattern,
                ACLS.join(", ")
            );
        }
    }
    if s == &HeaderSet::default() {
        bail!(
            "the header rule for '{}' sets nothing; give it cacheControl, contentType, \
             contentEncoding, contentDisposition, contentLanguage, storageClass or acl",
            spec.pattern
        );
    }
    Ok(())
}

/// Rules from `--header 'PATTERN=Name: value'` flags, in order; flags with
/// the same pattern one after another make one rule.
pub fn from_flags(flags: &[String]) -> Result<Vec<RuleSpec>> {
    let mut specs: Vec<RuleSpec> = Vec::new();
    for flag in flags {
        let Some((pattern, header)) = flag.split_once('=') else {
            bail!(
                "--header '{flag}' is not PATTERN=Name: value; write it like \
                 --header '*.html=Cache-Control: no-cache'"
            );
        };
        let Some((name, value)) = header.split_once(':') else {
            bail!(
                "--header '{flag}' has no 'Name: value' after the '='; write it like \
                 --header '*.html=Cache-Control: no-cache'"
            );
        };
        let (pattern, value) = (pattern.trim(), value.trim().to_string());
        if pattern.is_empty() {
            bail!("--header '{flag}' has no pattern before the '='");
        }
        let mut set = match specs.last_mut() {
            Some(last) if last.pattern == pattern => std::mem::take(&mut last.set),
            _ => HeaderSet::default(),
        };
        let slot = match name.trim().to_ascii_lowercase().as_str() {
            "cache-control" => &mut set.cache_control,
            "content-type" => &mut set.content_type,
            "content-encoding" => &mut set.content_encoding,
            "content-disposition" => &mut set.content_disposition,
            "content-language" => &mut set.content_language,
            "x-amz-storage-class" | "storage-class" => &mut set.storage_class,
            "x-amz-acl" | "acl" => &mut set.acl,
            other => bail!(
                "--header '{flag}': s3ma does not set the header '{other}'; it sets \
                 Cache-Control, Content-Type, Content-Encoding, Content-Disposition, \
                 Content-Language, x-amz-storage-class and x-amz-acl"
            ),
        };
        if let Some(before) = slot {
            bail!(
                "--header gives {} twice for '{pattern}' ('{before}', then '{value}'); keep one",
                name.trim()
            );
        }
        *slot = Some(value);
        match specs.last_mut() {
            Some(last) if last.pattern == pattern => last.set = set,
            _ => specs.push(RuleSpec {
                pattern: pattern.to_string(),
                set,
            }),
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Rules {
        Rules::new(serde_json::from_str(json).expect("json")).expect("rules")
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let r = rules(
            r#"[{"match": "*.html", "cacheControl": "no-cache"},
                {"match": "/assets/", "cacheControl": "max-age=31536000, immutable"},
                {"match": "*.gz", "contentEncoding": "gzip", "contentType": "text/plain"},
                {"match": "*", "cacheControl": "max-age=60"}]"#,
        );
        assert_eq!(
            r.for_rel("index.html").cache_control.as_deref(),
            Some("no-cache")
        );
        assert_eq!(
            r.for_rel("a/b/page.html").cache_control.as_deref(),
            Some("no-cache")
        );
        assert_eq!(
            r.for_rel("assets/app.1234.js").cache_control.as_deref(),
            Some("max-age=31536000, immutable")
        );
        assert_eq!(
            r.for_rel("x/assets/app.js").cache_control.as_deref(),
            Some("max-age=60")
        );
        let gz = r.for_rel("logs/a.txt.gz");
        assert_eq!(gz.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(gz.cache_control, None, "only the first match applies");
        assert_eq!(Rules::default().for_rel("a"), HeaderSet::default());
        assert_eq!(Rules::from_json(Some(&r.to_json())).to_json(), r.to_json());
        assert!(Rules::from_json(None).is_empty());
        assert!(Rules::from_json(Some("not json")).is_empty());
    }

    #[test]
    fn flags_make_rules_and_bad_ones_say_how() {
        let specs = from_flags(&[
            "*.html=Cache-Control: no-cache".into(),
            "*.html=content-language: en".into(),
            "*.gz=Content-Encoding: gzip".into(),
        ])
        .expect("flags");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].set.content_language.as_deref(), Some("en"));
        assert_eq!(specs[0].set.cache_control.as_deref(), Some("no-cache"));
        for (bad, says) in [
            ("*.html", "is not PATTERN=Name: value"),
            ("*.html=no-cache", "no 'Name: value'"),
            ("=Cache-Control: x", "no pattern"),
            (
                "*.html=X-Frame-Options: deny",
                "does not set the header 'x-frame-options'",
            ),
        ] {
            let err = from_flags(&[bad.into()]).expect_err(bad).to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let acl = rules_err(r#"[{"match": "*", "acl": "public"}]"#);
        assert!(acl.contains("not a canned ACL"), "{acl}");
        let unknown =
            serde_json::from_str::<Vec<RuleSpec>>(r#"[{"match": "*", "cacheControll": "x"}]"#)
                .expect_err("unknown key")
                .to_string();
        assert!(unknown.contains("cacheControll"), "{unknown}");
        let empty = rules_err(r#"[{"match": "*"}]"#);
        assert!(empty.contains("sets nothing"), "{empty}");
        let ctl = rules_err(r#"[{"match": "*", "cacheControl": "a\nb"}]"#);
        assert!(ctl.contains("a control character (U+000A)"), "{ctl}");
        let accent = rules_err(r#"[{"match": "*", "contentLanguage": "fr-\u00e9"}]"#);
        assert!(
            accent.contains("'é' (U+00E9), which is not ASCII"),
            "{accent}"
        );
        for never in ["", "  ", "#x", "!*.keep"] {
            let json = format!(r#"[{{"match": "{never}", "cacheControl": "x"}}]"#);
            assert!(rules_err(&json).contains("can match no file"), "{never}");
        }
        let trimmed = rules(r#"[{"match": " *.html ", "cacheControl": " no-cache "}]"#);
        assert_eq!(
            trimmed.for_rel("a.html").cache_control.as_deref(),
            Some("no-cache")
        );
        let twice = from_flags(&["*.h=Cache-Control: x".into(), "*.h=cache-control: y".into()])
            .expect_err("twice")
            .to_string();
        assert!(twice.contains("twice"), "{twice}");
    }

    fn rules_err(json: &str) -> String {
        Rules::new(serde_json::from_str(json).expect("json"))
            .expect_err(json)
            .to_string()
    }
}
