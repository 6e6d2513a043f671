//! The environment, read once.
//!
//! Every variable s3ma reads is taken here at start-up, so resolution is a
//! pure function of the command line, this snapshot and the config file,
//! and unit tests build the environment they mean instead of inheriting
//! the process's.

use std::path::PathBuf;

/// The variables that configure s3ma, empty ones treated as unset.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub endpoint_url_s3: Option<String>,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub default_region: Option<String>,
    pub profile: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    /// `AWS_ACCESS_KEY_ID` is set: the AWS chain will use it.
    pub access_key_id: bool,
    pub xdg_state_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub aws_config_file: Option<PathBuf>,
    pub aws_credentials_file: Option<PathBuf>,
}

impl Env {
    /// The process's environment now.
    pub fn capture() -> Env {
        Env::from_lookup(|name| std::env::var(name).ok())
    }

    /// The environment as `lookup` gives it.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Env {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        Env {
            endpoint_url_s3: get("AWS_ENDPOINT_URL_S3"),
            endpoint_url: get("AWS_ENDPOINT_URL"),
            region: get("AWS_REGION"),
            default_region: get("AWS_DEFAULT_REGION"),
            profile: get("AWS_PROFILE"),
            ca_bundle: get("AWS_CA_BUNDLE").map(PathBuf::from),
            access_key_id: get("AWS_ACCESS_KEY_ID").is_some(),
            xdg_state_home: get("XDG_STATE_HOME").map(PathBuf::from),
            home: get("HOME").map(PathBuf::from),
            aws_config_file: get("AWS_CONFIG_FILE").map(PathBuf::from),
            aws_credentials_file: get("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from),
        }
    }

    /// Where the state database lives unless told: `$XDG_STATE_HOME/s3ma`,
    /// `~/.local/state/s3ma`, else `/var/lib/s3ma`.
    pub fn default_state_dir(&self) -> PathBuf {
        if let Some(x) = &self.xdg_state_home {
            return x.join("s3ma");
        }
        match &self.home {
            Some(h) => h.join(".local/state/s3ma"),
            None => PathBuf::from("/var/lib/s3ma"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_variables_are_unset() {
        let env = Env::from_lookup(|name| match name {
            "AWS_REGION" => Some(String::new()),
            "AWS_DEFAULT_REGION" => Some("eu-west-1".into()),
            "HOME" => Some("/home/u".into()),
            _ => None,
        });
        assert_eq!(env.region, None);
        assert_eq!(env.default_region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            env.default_state_dir(),
            PathBuf::from("/home/u/.local/state/s3ma")
        );
        assert_eq!(
            Env::default().default_state_dir(),
            PathBuf::from("/var/lib/s3ma")
        );
    }
}
