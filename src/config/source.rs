//! The running config as the admin API shows it (`GET /config`): the file as loaded, *before*
//! `${VAR}` expansion (so nothing taken from the environment appears), with the secrets written
//! inline replaced by `<redacted>`, and the SHA-256 of the file's text to tell deployments apart.

use std::fmt::Write as _;

use serde_json::{Map, Value as Json};
use serde_yaml_ng::Value as Yaml;
use sha2::{Digest, Sha256};

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";
/// Keys whose values are secrets wherever they appear.
const SECRET_KEYS: [&str; 6] = ["secret", "secret_sha256", "password", "token", "client_secret", "api_key"];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSource {
    /// The config tree, secrets redacted.
    pub redacted: Json,
    /// `sha256:<hex>` of the config file's text.
    pub hash: String,
}

impl ConfigSource {
    /// `tree` is the parsed file before variable expansion; `text` the file as read.
    pub fn new(text: &str, tree: &Yaml) -> ConfigSource {
        let mut hash = String::from("sha256:");
        for byte in Sha256::digest(text.as_bytes()) {
            let _ = write!(hash, "{byte:02x}");
        }
        ConfigSource { redacted: redact(tree, None), hash }
    }
}

fn redact(value: &Yaml, key: Option<&str>) -> Json {
    match value {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => serde_json::to_value(n).unwrap_or(Json::Null),
        // A `${VAR}` reference is not a secret: its value was never put in the tree.
        Yaml::String(s) if s.contains("${") => Json::String(s.clone()),
        Yaml::String(_) if key.is_some_and(|k| SECRET_KEYS.contains(&k)) => Json::String(REDACTED.into()),
        Yaml::String(s) if key == Some("url") => Json::String(without_url_password(s)),
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(items.iter().map(|item| redact(item, key)).collect()),
        Yaml::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let name = match k {
                    Yaml::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_string(),
                };
                let redacted = redact(v, Some(&name));
                out.insert(name, redacted);
            }
            Json::Object(out)
        }
        Yaml::Tagged(tagged) => redact(&tagged.value, key),
    }
}

/// `scheme://user:password@host/...` without the password.
fn without_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_string() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secrets_are_redacted_and_references_kept() {
        let text = r#"
token_issuer:
  clients:
    genesys: { secret: hunter2-hunter2-hunter2, scopes: [ivr.read] }
    other: { secret: "${OTHER_SECRET}" }
databases:
  crm: { url: "postgres://app:s3cret@db.internal/crm" }
  local: { url: "sqlite://conf/demo.db" }
routes: [{ id: a, timeout_ms: 100 }]
"#;
        let tree: Yaml = serde_yaml_ng::from_str(text).unwrap();
        let source = ConfigSource::new(text, &tree);
        let shown = source.redacted.to_string();
        assert!(!shown.contains("hunter2") && !shown.contains("s3cret"), "{shown}");
        assert_eq!(source.redacted["token_issuer"]["clients"]["genesys"]["secret"], REDACTED);
        assert_eq!(source.redacted["token_issuer"]["clients"]["other"]["secret"], "${OTHER_SECRET}");
        assert_eq!(source.redacted["databases"]["crm"]["url"], "postgres://app:<redacted>@db.internal/crm");
        assert_eq!(source.redacted["databases"]["local"]["url"], "sqlite://conf/demo.db");
        assert_eq!(source.redacted["routes"][0]["timeout_ms"], 100);
        assert_eq!(source.hash.len(), "sha256:".len() + 64);
        assert_ne!(source.hash, ConfigSource::new(&text.replace("100", "200"), &tree).hash);
    }
}
