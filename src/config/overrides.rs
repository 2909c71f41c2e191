//! What the environment may change in a parsed config, before it is typed:
//!
//! - **Overrides**: `SLUICE_SINKS__UPSTREAM__URL=http://…` sets `sinks.upstream.url`. The name
//!   after `SLUICE_` is split on `__` into levels and lower-cased. The value is read as a TOML
//!   value when it is one (`42`, `true`, `"x"`, `["a", "b"]`, `{ max_events = 5 }`), else as a
//!   plain string. Variables the command line reads itself ([`CLI_VARIABLES`]) are not keys.
//! - **Interpolation**: `${VAR}` in any string value is replaced by the variable's value,
//!   `${VAR:-fallback}` uses the fallback when it is unset or empty, and `$${` writes a literal
//!   `${`. An unset variable without a fallback is an error, never an empty string, so a missing
//!   secret cannot silently become "no token".

use std::collections::HashMap;

use toml::{Table, Value};

/// Environment variables with the `SLUICE_` prefix that belong to the command line, not the
/// config tree.
pub const CLI_VARIABLES: &[&str] = &["SLUICE_CONFIG", "SLUICE_LOG", "SLUICE_LOG_FORMAT"];
pub const ENV_PREFIX: &str = "SLUICE_";

/// Applies `SLUICE_*` overrides to `root`; returns dotted key → variable name for each key set.
pub fn apply_env_overrides(
    root: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<HashMap<String, String>, (String, String)> {
    let mut applied = HashMap::new();
    let mut vars: Vec<_> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !CLI_VARIABLES.contains(&name.as_str()))
        .collect();
    vars.sort(); // deterministic: a table set by one variable, then a key inside it by another
    for (name, raw) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err((
                name,
                "expected SLUICE_<KEY>__<KEY>…, found an empty level".into(),
            ));
        }
        let mut table = &mut *root;
        for level in &path[..path.len() - 1] {
            let entry = table
                .entry(level.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            table = match entry {
                Value::Table(t) => t,
                other => {
                    return Err((
                        name,
                        format!("`{level}` is a {}, not a table", other.type_str()),
                    ));
                }
            };
        }
        let key = path[path.len() - 1].clone();
        table.insert(key, parse_env_value(&raw));
        applied.insert(path.join("."), name);
    }
    Ok(applied)
}

fn parse_env_value(raw: &str) -> Value {
    let wrapped = format!("v = {raw}");
    match wrapped.parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

/// Replaces `${VAR}` in every string of `root`. Errors are (dotted key, message).
pub fn interpolate(
    root: &mut Table,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for (key, value) in root.iter_mut() {
        interpolate_value(key.clone(), value, lookup, &mut errors);
    }
    errors
}

fn interpolate_value(
    path: String,
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(s) if s.contains('$') => match expand(s, lookup) {
            Ok(expanded) => *s = expanded,
            Err(message) => errors.push((path, message)),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(format!("{path}.{i}"), item, lookup, errors);
            }
        }
        Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                interpolate_value(format!("{path}.{key}"), item, lookup, errors);
            }
        }
        _ => {}
    }
}

/// Expands `${VAR}`, `${VAR:-fallback}` and the escape `$${` in one string.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(format!("expected `}}` to close `${{` in {input:?}"));
            };
            let inner = &after[..end];
            let (name, fallback) = match inner.split_once(":-") {
                Some((name, fallback)) => (name, Some(fallback)),
                None => (inner, None),
            };
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "expected a variable name in `${{{inner}}}`, found {name:?}"
                ));
            }
            match (lookup(name).filter(|v| !v.is_empty()), fallback) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(fallback)) => out.push_str(fallback),
                (None, None) => {
                    return Err(format!(
                        "the environment variable {name} is not set (write ${{{name}:-default}} for a fallback)"
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn expand_replaces_variables_fallbacks_and_escapes() {
        let lookup = env(&[("TOKEN", "s3cret"), ("EMPTY", "")]);
        assert_eq!(
            expand("Bearer ${TOKEN}", &lookup).as_deref(),
            Ok("Bearer s3cret")
        );
        assert_eq!(
            expand("${MISSING:-x}-${EMPTY:-y}", &lookup).as_deref(),
            Ok("x-y")
        );
        assert_eq!(
            expand("cost $5 and $${LITERAL}", &lookup).as_deref(),
            Ok("cost $5 and ${LITERAL}")
        );
        assert!(
            expand("${MISSING}", &lookup)
                .unwrap_err()
                .contains("MISSING is not set")
        );
        assert!(expand("${OPEN", &lookup).is_err());
        assert!(expand("${bad-name}", &lookup).is_err());
    }

    #[test]
    fn env_overrides_set_nested_keys_with_typed_values() {
        let mut root: Table = "[sinks.up]\nurl = \"http://a\"\n"
            .parse()
            .expect("valid toml");
        let applied = apply_env_overrides(
            &mut root,
            [
                (
                    "SLUICE_SINKS__UP__URL".to_string(),
                    "http://b:5000/x".to_string(),
                ),
                ("SLUICE_SINKS__UP__CONCURRENCY".to_string(), "8".to_string()),
                ("SLUICE_CONFIG".to_string(), "ignored.toml".to_string()),
                ("OTHER".to_string(), "1".to_string()),
            ],
        )
        .expect("overrides apply");
        let up = root["sinks"]["up"].as_table().expect("table");
        assert_eq!(up["url"].as_str(), Some("http://b:5000/x"));
        assert_eq!(up["concurrency"].as_integer(), Some(8));
        assert_eq!(
            applied.get("sinks.up.url").map(String::as_str),
            Some("SLUICE_SINKS__UP__URL")
        );
        assert!(!root.contains_key("config"));
    }
}
