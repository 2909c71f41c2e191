//! A sink's `queue = { … }` setting: its kind, bounds, full policy and the disk queue's sync
//! options, parsed from the config and checked together ([`QueueConfig::validate`]), so that
//! a combination that cannot work is a config error with a hint, never a surprise at run time.

use serde::Deserialize;

use crate::config::error::{ConfigError, Locator};
use crate::config::{ByteSize, HumanDuration};

/// What a full queue does with one more event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The producer waits for room (HTTP callers are held up to `accept_timeout`).
    #[default]
    Block,
    /// The incoming event is dropped and counted.
    DropNewest,
    /// The oldest queued events are dropped and counted to make room (memory queues only).
    DropOldest,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    Memory,
    /// The durable segment log in `data_dir/queues/<sink>/`: the default.
    #[default]
    Disk,
}

/// When a disk queue's writes become durable: `"always"` (fsync before the ack; the default),
/// `"never"` (the OS decides: survives a crash of the process, not of the machine), or
/// `{ every = "100ms" }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncSetting {
    #[default]
    Always,
    Never,
    Every(HumanDuration),
}

impl<'de> Deserialize<'de> for SyncSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Every { every: HumanDuration },
        }
        const EXPECTED: &str = "expected \"always\", \"never\" or { every = \"100ms\" }";
        match Raw::deserialize(deserializer).map_err(|_| serde::de::Error::custom(EXPECTED))? {
            Raw::Name(name) if name == "always" => Ok(SyncSetting::Always),
            Raw::Name(name) if name == "never" => Ok(SyncSetting::Never),
            Raw::Name(name) => Err(serde::de::Error::custom(format!(
                "{EXPECTED}, found {name:?}"
            ))),
            Raw::Every { every } if every.0.is_zero() => Err(serde::de::Error::custom(
                "expected an interval above 0s in { every = … }; for a sync before every ack, \
                 use sync = \"always\"",
            )),
            Raw::Every { every } => Ok(SyncSetting::Every(every)),
        }
    }
}

impl SyncSetting {
    pub fn policy(self) -> sluice_diskq::SyncPolicy {
        match self {
            SyncSetting::Always => sluice_diskq::SyncPolicy::Always,
            SyncSetting::Never => sluice_diskq::SyncPolicy::Never,
            SyncSetting::Every(every) => sluice_diskq::SyncPolicy::Every(every.0),
        }
    }
}

/// The longest `sync_gather`: beyond it, a durable ack would wait longer for its gathering
/// than for any sync, and `sync = { every = … }` says what is meant.
const MAX_SYNC_GATHER: std::time::Duration = std::time::Duration::from_millis(100);

/// `queue = { type = "disk", max_bytes = "10GiB", when_full = "block", sync = "always" }` or
/// `queue = { type = "memory", max_events = 100000, max_bytes = "256MiB", when_full = "block" }`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(rename = "type", default)]
    pub kind: QueueKind,
    /// Memory queues only: events held at most (default 100000).
    #[serde(default)]
    pub max_events: Option<usize>,
    /// Bytes held at most (default 256MiB in memory, 10GiB on disk).
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
    #[serde(default)]
    pub when_full: WhenFull,
    /// Disk queues only.
    #[serde(default)]
    pub sync: Option<SyncSetting>,
    /// Disk queues with `sync = "always"` only: how long the writer gathers appends after a
    /// sync before the next one (default 200us; "0s": never). Fewer, larger syncs under load.
    #[serde(default)]
    pub sync_gather: Option<HumanDuration>,
    /// Disk queues only: the largest event accepted (default 16MiB).
    #[serde(default)]
    pub max_event_bytes: Option<ByteSize>,
    /// Disk queues only: keep the next segment file written ahead with zeros (default true), so
    /// a sync overwrites existing blocks instead of growing the file: shorter syncs, for one
    /// spare segment of disk space and writing each segment's bytes twice.
    #[serde(default)]
    pub preallocate: Option<bool>,
    /// Disk queues with `sync = "always"` only: write segments with `O_DIRECT` where the
    /// filesystem takes it (default true). Each write is synced at once anyway; bypassing the
    /// page cache halves the CPU of a write + sync.
    #[serde(default)]
    pub direct_io: Option<bool>,
    /// Memory queues only: `"disk"` spills to a disk queue when memory is full.
    #[serde(default)]
    pub overflow: Option<Overflow>,
    /// With `overflow = "disk"`: the disk tier's bound (default 10GiB).
    #[serde(default)]
    pub overflow_max_bytes: Option<ByteSize>,
}

/// Where a full memory queue sends what does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    Disk,
}

impl QueueConfig {
    pub fn max_events(&self) -> usize {
        self.max_events.unwrap_or(100_000)
    }

    pub fn max_bytes(&self) -> ByteSize {
        self.max_bytes.unwrap_or(match self.kind {
            QueueKind::Memory => ByteSize::mib(256),
            QueueKind::Disk => ByteSize::gib(10),
        })
    }

    pub fn sync(&self) -> SyncSetting {
        self.sync.unwrap_or_default()
    }

    /// Whether the queue keeps events in `data_dir/queues/<sink>/`: a disk queue, or a memory
    /// queue that spills to disk.
    pub fn on_disk(&self) -> bool {
        self.kind == QueueKind::Disk || self.overflow == Some(Overflow::Disk)
    }

    /// The largest event a disk (tier) bounded by `disk_max_bytes` takes: as configured, or
    /// 16MiB, but never more than a quarter of the queue, so a small queue still opens.
    pub fn max_event_bytes(&self, disk_max_bytes: ByteSize) -> ByteSize {
        self.max_event_bytes
            .unwrap_or(ByteSize(ByteSize::mib(16).0.min(disk_max_bytes.0 / 4)))
    }

    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Some(gather) = self.sync_gather {
            if self.sync.is_some_and(|s| s != SyncSetting::Always) {
                errors.push(locator.error_with_hint(
                    &format!("{prefix}.sync_gather"),
                    "`sync_gather` applies only with sync = \"always\"",
                    "remove it: other sync settings already sync many writes at once",
                ));
            }
            if gather.0 > MAX_SYNC_GATHER {
                errors.push(locator.error_with_hint(
                    &format!("{prefix}.sync_gather"),
                    format!(
                        "expected at most 100ms, found {}",
                        humantime::format_duration(gather.0)
                    ),
                    "for fewer syncs at a longer wait, use sync = { every = \"…\" }",
                ));
            }
        }
        if self.max_events == Some(0) {
            errors.push(locator.error(
                &format!("{prefix}.max_events"),
                "expected at least 1, found 0",
            ));
        }
        if self.max_bytes.is_some_and(|b| b.0 == 0) {
            errors.push(locator.error(
                &format!("{prefix}.max_bytes"),
                "expected at least 1 byte, found 0",
            ));
        }
        match self.kind {
            QueueKind::Memory => {
                let spills = self.overflow.is_some();
                if spills && self.when_full == WhenFull::DropOldest {
                    errors.push(locator.error_with_hint(
                        &format!("{prefix}.when_full"),
                        "a queue that spills to disk never drops what it holds (drop_oldest)",
                        "use \"block\" or \"drop_newest\": it applies when the disk tier is full",
                    ));
                }
                if self.overflow_max_bytes.is_some_and(|b| b.0 < 1 << 20) {
                    errors.push(locator.error(
                        &format!("{prefix}.overflow_max_bytes"),
                        "expected at least 1MiB for a disk queue",
                    ));
                }
                if !spills && self.overflow_max_bytes.is_some() {
                    errors.push(locator.error_with_hint(
                        &format!("{prefix}.overflow_max_bytes"),
                        "`overflow_max_bytes` applies only with overflow = \"disk\"",
                        "add overflow = \"disk\", or remove it",
                    ));
                }
                for (key, set) in [
                    ("sync", self.sync.is_some() && !spills),
                    ("sync_gather", self.sync_gather.is_some() && !spills),
                    ("max_event_bytes", self.max_event_bytes.is_some() && !spills),
                    ("preallocate", self.preallocate.is_some() && !spills),
                    ("direct_io", self.direct_io.is_some() && !spills),
                ] {
                    if set {
                        errors.push(locator.error_with_hint(
                            &format!("{prefix}.{key}"),
                            format!("`{key}` applies to disk queues, and this one is in memory"),
                            "remove it, or set type = \"disk\"",
                        ));
                    }
                }
            }
            QueueKind::Disk => {
                if self.overflow.is_some() || self.overflow_max_bytes.is_some() {
                    errors.push(locator.error_with_hint(
                        &format!("{prefix}.overflow"),
                        "a disk queue has nowhere further to overflow",
                        "overflow = \"disk\" goes with type = \"memory\"",
                    ));
                }
                if self.max_events.is_some() {
                    errors.push(locator.error_with_hint(
                        &format!("{prefix}.max_events"),
                        "a disk queue is bounded by max_bytes, not by a number of events",
                        "remove max_events, or set type = \"memory\"",
                    ));
                }
                if self.when_full == WhenFull::DropOldest {
                    errors.push(locator.error_with_hint(
                        &format!("{prefix}.when_full"),
                        "a disk queue never drops what it already holds (drop_oldest)",
                        "use \"block\" (backpressure) or \"drop_newest\"",
                    ));
                }
                if self.max_bytes.is_some_and(|b| b.0 < 1 << 20) {
                    errors.push(locator.error(
                        &format!("{prefix}.max_bytes"),
                        "expected at least 1MiB for a disk queue",
                    ));
                }
                if let Some(event) = self
                    .max_event_bytes
                    .filter(|e| e.0 + 64 > self.max_bytes().0)
                {
                    errors.push(locator.error(
                        &format!("{prefix}.max_event_bytes"),
                        format!(
                            "expected an event limit below max_bytes ({}), found {event}",
                            self.max_bytes()
                        ),
                    ));
                }
                if self
                    .max_event_bytes
                    .is_some_and(|b| b.0 == 0 || b.0 > 256 << 20)
                {
                    errors.push(locator.error(
                        &format!("{prefix}.max_event_bytes"),
                        "expected 1 byte to 256MiB",
                    ));
                }
            }
        }
        errors
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            kind: QueueKind::Disk,
            max_events: None,
            max_bytes: None,
            when_full: WhenFull::Block,
            sync: None,
            sync_gather: None,
            max_event_bytes: None,
            preallocate: None,
            direct_io: None,
            overflow: None,
            overflow_max_bytes: None,
        }
    }
}
