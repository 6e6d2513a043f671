//! Content-Type lookup: a user's Apache `mime.types` file (node-s3ma's
//! `mimeConfig`) first, then the built-in `mime_guess` table, then
//! `application/octet-stream`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

const DEFAULT_TYPE: &str = "application/octet-stream";

/// Extension (lower case, no dot) → media type.
#[derive(Debug, Default, Clone)]
pub struct MimeTable {
    overrides: HashMap<String, String>,
}

impl MimeTable {
    /// Reads an Apache `mime.types` file: `type ext ext…` per line, `#`
    /// starts a comment.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the mime types file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the mime types file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut overrides = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(media_type) = words.next() else {
                continue;
            };
            if !media_type.contains('/') {
                bail!(
                    "line {}: '{media_type}' is not a media type (expected `type/subtype ext ext…`)",
                    n + 1
                );
            }
            for ext in words {
                overrides.insert(
                    ext.trim_start_matches('.').to_ascii_lowercase(),
                    media_type.to_string(),
                );
            }
        }
        Ok(MimeTable { overrides })
    }

    /// The Content-Type for a relative path or key.
    pub fn content_type(&self, name: &str) -> String {
        let base = name.rsplit('/').next().unwrap_or(name);
        let ext = match base.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
            _ => return DEFAULT_TYPE.to_string(),
        };
        if let Some(t) = self.overrides.get(&ext) {
            return t.clone();
        }
        mime_guess::from_ext(&ext)
            .first_raw()
            .unwrap_or(DEFAULT_TYPE)
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_and_default() {
        let t = MimeTable::default();
        assert_eq!(t.content_type("index.html"), "text/html");
        assert_eq!(t.content_type("css/site.CSS"), "text/css");
        assert_eq!(t.content_type("README"), DEFAULT_TYPE);
        assert_eq!(t.content_type(".bashrc"), DEFAULT_TYPE);
        assert_eq!(t.content_type("x.unknownext"), DEFAULT_TYPE);
    }

    #[test]
    fn overrides_win() {
        let t = MimeTable::parse("# comment\napplication/x-test  test tst\n\ntext/x-html html\n")
            .expect("valid");
        assert_eq!(t.content_type("a/b.test"), "application/x-test");
        assert_eq!(t.content_type("b.TST"), "application/x-test");
        assert_eq!(t.content_type("index.html"), "text/x-html");
        assert_eq!(t.content_type("a.css"), "text/css");
    }

    #[test]
    fn rejects_garbage_lines() {
        let err = MimeTable::parse("text/plain txt\nnot-a-type foo\n").expect_err("invalid");
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
