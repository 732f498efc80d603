//! `${NAME}` and `${NAME:-default}` expansion inside string values, for secrets and addresses.
//!
//! Runs on the parsed YAML tree (not the raw text) so a comment never needs a variable and every
//! error names the YAML path of the value that refers to the missing variable. `$${` writes a
//! literal `${`. Values stay strings: a number-typed key takes a literal number.

use serde_yaml_ng::Value;

use super::ConfigError;

/// Where variables are read from: the process environment in production, a map in tests and
/// in `seawall demo` (which fills in the ports it chose).
pub trait EnvLookup {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvLookup for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> EnvLookup for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Expands every string scalar in `value`, collecting one error per unresolvable reference.
pub fn expand_tree(value: &mut Value, path: &str, env: &dyn EnvLookup, errors: &mut Vec<ConfigError>) {
    match value {
        Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => {
                errors.push(ConfigError::at(path, message));
                *value = Value::String(String::new());
            }
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_tree(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = key_name(key);
                let child = if path.is_empty() { key } else { format!("{path}.{key}") };
                expand_tree(item, &child, env, errors);
            }
        }
        Value::Tagged(tagged) => expand_tree(&mut tagged.value, path, env, errors),
        _ => {}
    }
}

pub(super) fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other).map(|s| s.trim_end().to_string()).unwrap_or_else(|_| "?".to_string()),
    }
}

/// Expands one string. Errors name the variable, never its value.
pub fn expand(input: &str, env: &dyn EnvLookup) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
            continue;
        }
        let Some(body_start) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(format!("unterminated `${{` in `{}`", truncate(input)));
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if !is_valid_name(name) {
            return Err(format!(
                "`${{{body}}}` is not a valid variable reference (letters, digits and `_`, not starting with a digit)"
            ));
        }
        match (env.get(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set and has no default (write `${{{name}:-default}}` for one)"
                ))
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn truncate(s: &str) -> String {
    const MAX: usize = 60;
    if s.len() <= MAX {
        s.to_string()
    } else {
        let cut = (0..=MAX).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        format!("{}…", &s[..cut])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        assert_eq!(expand("a ${SECRET} b", &env).unwrap(), "a s3cr3t b");
        assert_eq!(expand("${MISSING:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(expand("${SECRET:-fallback}", &env).unwrap(), "s3cr3t");
        assert_eq!(expand("${EMPTY:-x}", &env).unwrap(), "");
        assert_eq!(expand("${MISSING:-}", &env).unwrap(), "");
        assert_eq!(expand("cost $5 and $${KEEP}", &env).unwrap(), "cost $5 and ${KEEP}");
    }

    #[test]
    fn names_the_missing_variable() {
        let err = expand("postgres://${DB_USER}@db", &env).unwrap_err();
        assert!(err.contains("`DB_USER` is not set"), "{err}");
        assert!(expand("${bad-name}", &env).unwrap_err().contains("not a valid variable"));
        assert!(expand("${OPEN", &env).unwrap_err().contains("unterminated"));
    }
}
