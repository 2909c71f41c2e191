//! The config file: TOML, read once at start.
//!
//! Loading goes text → TOML table → `SLUICE_*` environment overrides → `${VAR}` interpolation →
//! typed [`Config`], then the topology check. Every problem found on the way is collected and
//! reported together, each with file, line, key, what was expected and what was found
//! ([`ConfigErrors`]). Nothing is started or created while loading: `sluice validate` and
//! `sluice run` share this path, so a file that validates is a file that runs.
//!
//! Component tables are parsed by their registries ([`crate::sources`], [`crate::sinks`]):
//! adding a kind adds a variant there, not code here.

pub mod error;
pub mod overrides;
pub mod typed;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

pub use error::{ConfigError, ConfigErrors, Locator};
pub use units::{ByteSize, HumanDuration};

use crate::queue::QueueConfig;
use crate::sinks::{DeliveryConfig, RetryConfig, SinkSettings};
use crate::sources::SourceSettings;
use error::did_you_mean;
use typed::{deserialize, struct_fields, unknown_keys};

/// A loaded, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// Where queues and the node identity live.
    pub data_dir: PathBuf,
    /// This node's id in event ids; by default a random id kept in `data_dir/node_id`.
    pub node_id: Option<u32>,
    /// How long SIGTERM waits for queued events to be delivered before exiting.
    pub shutdown_timeout: HumanDuration,
    pub admin: AdminConfig,
    pub sources: Vec<SourceConfig>,
    pub sinks: Vec<SinkConfig>,
}

/// The admin listener: `/metrics`, `/health`, `/ready`, `/stats`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "AdminConfig::default_listen")]
    pub listen: SocketAddr,
}

impl AdminConfig {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9600))
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Self::default_listen(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub settings: SourceSettings,
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    /// Sources (and, later, routes) whose events this sink takes.
    pub inputs: Vec<String>,
    pub queue: QueueConfig,
    pub delivery: DeliveryConfig,
    pub settings: SinkSettings,
}

/// The top level of the file, before the component tables are typed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopLevel {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    node_id: Option<u32>,
    #[serde(default = "default_shutdown_timeout")]
    shutdown_timeout: HumanDuration,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    sources: Table,
    #[serde(default)]
    sinks: Table,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// Keys every sink takes, whatever its type; the rest of a sink's table belongs to its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkCommon {
    inputs: Vec<String>,
    #[serde(default)]
    queue: QueueConfig,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    rate_limit: u32,
    #[serde(default)]
    retry: RetryConfig,
}

const SINK_COMMON_KEYS: &[&str] = &["inputs", "queue", "concurrency", "rate_limit", "retry"];

impl Config {
    /// Reads and checks `path` with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
                hint: None,
            }])
        })?;
        Self::parse(path, &text, std::env::vars(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Checks `text` as if it were the file at `path`, with the given environment.
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let mut locator = Locator::new(path, text);
        let mut root: Table = toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            ConfigErrors(vec![locator.at_offset(e.span().map(|s| s.start), message)])
        })?;
        match overrides::apply_env_overrides(&mut root, env) {
            Ok(applied) => locator.from_env = applied.into_iter().collect(),
            Err((var, message)) => {
                return Err(ConfigErrors(vec![ConfigError {
                    file: path.to_path_buf(),
                    line: None,
                    key: String::new(),
                    message: format!("environment variable {var}: {message}"),
                    hint: None,
                }]));
            }
        }
        let mut errors: Vec<ConfigError> = overrides::interpolate(&mut root, lookup)
            .into_iter()
            .map(|(key, message)| locator.error(&key, message))
            .collect();

        errors.extend(
            unknown_keys(&root, struct_fields::<TopLevel>(), "", &locator)
                .into_iter()
                .map(|mut e| {
                    e.key = e.key.trim_start_matches('.').to_string();
                    e
                }),
        );
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let top: TopLevel = deserialize(root, "", &locator).map_err(|e| ConfigErrors(vec![e]))?;

        let mut sources = Vec::new();
        for (name, value) in top.sources {
            let prefix = format!("sources.{name}");
            match component_table(&name, value, &prefix, SourceSettings::KINDS, &locator) {
                Ok((kind, table)) => match SourceSettings::parse(&kind, table, &prefix, &locator) {
                    Ok(settings) => {
                        errors.extend(settings.validate(&prefix, &locator));
                        sources.push(SourceConfig { name, settings });
                    }
                    Err(e) => errors.extend(e),
                },
                Err(e) => errors.extend(e),
            }
        }

        let mut sinks = Vec::new();
        for (name, value) in top.sinks {
            let prefix = format!("sinks.{name}");
            match component_table(&name, value, &prefix, SinkSettings::KINDS, &locator) {
                Ok((kind, table)) => match parse_sink(&name, &kind, table, &prefix, &locator) {
                    Ok(sink) => sinks.push(sink),
                    Err(e) => errors.extend(e),
                },
                Err(e) => errors.extend(e),
            }
        }

        let config = Config {
            path: path.to_path_buf(),
            data_dir: top.data_dir,
            node_id: top.node_id,
            shutdown_timeout: top.shutdown_timeout,
            admin: top.admin,
            sources,
            sinks,
        };
        if errors.is_empty() {
            errors.extend(crate::topology::check(&config, &locator));
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Checks a component's name and `type`; returns the kind and the table without `type`.
fn component_table(
    name: &str,
    value: Value,
    prefix: &str,
    kinds: &[&str],
    locator: &Locator,
) -> Result<(String, Table), Vec<ConfigError>> {
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid_name {
        return Err(vec![locator.error_with_hint(
            prefix,
            format!("expected a name of lowercase letters, digits, `_` or `-` (at most 64), found {name:?}"),
            "names appear in metrics and in SLUICE_* environment overrides",
        )]);
    }
    let Value::Table(mut table) = value else {
        return Err(vec![locator.error(
            prefix,
            format!("expected a table, found a {}", value.type_str()),
        )]);
    };
    let kind = match table.remove("type") {
        Some(Value::String(kind)) => kind,
        Some(other) => {
            return Err(vec![locator.error(
                &format!("{prefix}.type"),
                format!("expected a string, found a {}", other.type_str()),
            )]);
        }
        None => {
            return Err(vec![locator.error_with_hint(
                prefix,
                "missing key `type`",
                format!("expected one of: {}", kinds.join(", ")),
            )]);
        }
    };
    if !kinds.contains(&kind.as_str()) {
        let hint = match did_you_mean(&kind, kinds.iter().copied()) {
            Some(near) => format!("did you mean \"{near}\"?"),
            None => format!("expected one of: {}", kinds.join(", ")),
        };
        return Err(vec![locator.error_with_hint(
            &format!("{prefix}.type"),
            format!("unknown type {kind:?}"),
            hint,
        )]);
    }
    Ok((kind, table))
}

fn parse_sink(
    name: &str,
    kind: &str,
    mut table: Table,
    prefix: &str,
    locator: &Locator,
) -> Result<SinkConfig, Vec<ConfigError>> {
    let kind_keys = SinkSettings::fields(kind);
    let allowed: Vec<&str> = SINK_COMMON_KEYS.iter().chain(kind_keys).copied().collect();
    let unknown = unknown_keys(&table, &allowed, prefix, locator);
    if !unknown.is_empty() {
        return Err(unknown);
    }
    let mut common = Table::new();
    for key in SINK_COMMON_KEYS {
        if let Some(value) = table.remove(*key) {
            common.insert((*key).to_string(), value);
        }
    }
    if !common.contains_key("inputs") {
        return Err(vec![locator.error_with_hint(
            prefix,
            "missing key `inputs`",
            "list the sources whose events this sink takes, e.g. inputs = [\"api\"]",
        )]);
    }
    let common: SinkCommon = deserialize(common, prefix, locator).map_err(|e| vec![e])?;
    let settings = SinkSettings::parse(kind, table, prefix, locator)?;
    let delivery = DeliveryConfig {
        concurrency: common
            .concurrency
            .unwrap_or_else(|| settings.default_concurrency()),
        rate_limit: common.rate_limit,
        retry: common.retry,
    };
    let mut errors = settings.validate(prefix, locator);
    errors.extend(common.queue.validate(&format!("{prefix}.queue"), locator));
    errors.extend(delivery.validate(prefix, locator));
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SinkConfig {
        name: name.to_string(),
        inputs: common.inputs,
        queue: common.queue,
        delivery,
        settings,
    })
}
