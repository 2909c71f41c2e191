//! Turning a TOML table into a typed struct, with errors located at the offending key.
//!
//! Unknown keys are found before serde sees the table, by asking the target type for its field
//! names ([`struct_fields`]), so the error can point at the exact key and suggest the nearest
//! valid one. serde then reports type errors with their path (via `serde_path_to_error`).

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use toml::{Table, Value};

use super::error::{ConfigError, Locator, did_you_mean};

/// The field names of a `#[derive(Deserialize)]` struct, read by asking serde to deserialize it
/// from a deserializer that only records what it is asked for.
pub fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Recorder<'a>(&'a mut &'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for Recorder<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Recorder(&mut fields));
    fields
}

/// Reports every key of `table` that is not in `allowed`, each at its own line.
pub fn unknown_keys(
    table: &Table,
    allowed: &[&str],
    prefix: &str,
    locator: &Locator,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for key in table.keys() {
        if allowed.contains(&key.as_str()) {
            continue;
        }
        let dotted = format!("{prefix}.{key}");
        let message = format!("unknown key `{key}`");
        errors.push(match did_you_mean(key, allowed.iter().copied()) {
            Some(near) => {
                locator.error_with_hint(&dotted, message, format!("did you mean `{near}`?"))
            }
            None => locator.error_with_hint(
                &dotted,
                message,
                format!("expected one of: {}", allowed.join(", ")),
            ),
        });
    }
    errors
}

/// Deserializes `table` into `T`, naming the key of the first type error.
pub fn deserialize<T: DeserializeOwned>(
    table: Table,
    prefix: &str,
    locator: &Locator,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize::<_, T>(Value::Table(table)).map_err(|error| {
        let mut key = prefix.to_string();
        for segment in error.path().iter() {
            match segment {
                serde_path_to_error::Segment::Map { key: k } => key = format!("{key}.{k}"),
                serde_path_to_error::Segment::Seq { index } => key = format!("{key}.{index}"),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => {}
            }
        }
        let message = error.into_inner().message().to_string();
        locator.error(key.trim_start_matches('.'), message)
    })
}

/// Checks for unknown keys, then deserializes: the two steps every component table goes through.
pub fn parse_table<T: DeserializeOwned>(
    table: Table,
    prefix: &str,
    locator: &Locator,
) -> Result<T, Vec<ConfigError>> {
    let unknown = unknown_keys(&table, struct_fields::<T>(), prefix, locator);
    if !unknown.is_empty() {
        return Err(unknown);
    }
    deserialize(table, prefix, locator).map_err(|e| vec![e])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[allow(dead_code)] // fields are read through serde only
    struct Sample {
        url: String,
        concurrency: usize,
    }

    #[test]
    fn struct_fields_lists_declared_fields() {
        assert_eq!(struct_fields::<Sample>(), &["url", "concurrency"]);
    }
}
