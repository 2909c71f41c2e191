//! Config errors that say where: file, line, the dotted key, what was expected and what was
//! found, and a hint when one helps (a likely typo, a value from the environment).
//!
//! Lines come from a second, span-keeping parse of the file text ([`Locator`]); a key that was
//! set from the environment is reported as coming from that variable instead.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line of the key, when the key is in the file.
    pub line: Option<usize>,
    /// The dotted key (`sinks.upstream.url`), empty for file-level problems.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one file; validation reports them all at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Maps dotted keys back to lines of the original text, and knows which keys the environment
/// set.
pub struct Locator<'t> {
    file: PathBuf,
    text: &'t str,
    root: Option<DeTable<'t>>,
    /// Dotted key → the environment variable that set it.
    pub from_env: HashMap<String, String>,
}

impl<'t> Locator<'t> {
    pub fn new(file: &Path, text: &'t str) -> Self {
        let root = DeTable::parse(text)
            .ok()
            .map(|spanned| spanned.into_inner());
        Self {
            file: file.to_path_buf(),
            text,
            root,
            from_env: HashMap::new(),
        }
    }

    /// An error at `key` (a dotted path; array indexes as numbers).
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let mut hint = None;
        let mut line = None;
        if let Some(var) = self.env_var_for(key) {
            hint = Some(format!(
                "the value comes from the environment variable {var}"
            ));
        } else {
            line = self.line_of(key);
        }
        ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message: message.into(),
            hint,
        }
    }

    pub fn error_with_hint(
        &self,
        key: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> ConfigError {
        let mut error = self.error(key, message);
        error.hint = Some(match error.hint {
            Some(env) => format!("{}; {env}", hint.into()),
            None => hint.into(),
        });
        error
    }

    /// An error about the file itself at a byte offset (syntax errors).
    pub fn at_offset(&self, offset: Option<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: offset.map(|o| line_of_offset(self.text, o)),
            key: String::new(),
            message: message.into(),
            hint: None,
        }
    }

    fn env_var_for(&self, key: &str) -> Option<&str> {
        // The variable may have set this key or a table above it.
        let mut probe = key;
        loop {
            if let Some(var) = self.from_env.get(probe) {
                return Some(var);
            }
            probe = probe.rsplit_once('.')?.0;
        }
    }

    /// The line of the deepest part of `key` that exists in the file.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut best = None;
        let mut table = Some(root);
        let mut array: Option<&toml::de::DeArray<'_>> = None;
        for segment in key.split('.').filter(|s| !s.is_empty()) {
            let value = if let Some(t) = table.take() {
                let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref() == segment) else {
                    break;
                };
                best = Some(k.span().start);
                v
            } else if let Some(a) = array.take() {
                let Some(v) = segment.parse::<usize>().ok().and_then(|i| a.get(i)) else {
                    break;
                };
                best = Some(v.span().start);
                v
            } else {
                break;
            };
            match value.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        best.map(|offset| line_of_offset(self.text, offset))
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locator_finds_nested_keys_and_inline_tables() {
        let text = "data_dir = \"x\"\n\n[sinks.up]\ntype = \"http\"\nqueue = { max_events = 5 }\n";
        let locator = Locator::new(Path::new("f.toml"), text);
        assert_eq!(locator.line_of("data_dir"), Some(1));
        assert_eq!(locator.line_of("sinks.up.type"), Some(4));
        assert_eq!(locator.line_of("sinks.up.queue.max_events"), Some(5));
        // A key that is not in the file points at the nearest table that is.
        assert_eq!(locator.line_of("sinks.up.missing"), Some(3));
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(
            did_you_mean("urll", ["url", "inputs", "queue"]),
            Some("url")
        );
        assert_eq!(
            did_you_mean("concurency", ["concurrency", "rate_limit"]),
            Some("concurrency")
        );
        assert_eq!(did_you_mean("zzz", ["url", "inputs"]), None);
    }
}
