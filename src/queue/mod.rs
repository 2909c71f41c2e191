//! The bounded queue in front of every sink.
//!
//! A source never waits on a sink, only, at most, on the queue's policy for a full queue:
//! `block` (the source waits up to its `accept_timeout`, then the event is refused and counted
//! `queue_full`), `drop_newest` (the incoming event is refused and counted) or `drop_oldest`
//! (the oldest queued events are evicted and counted to make room). Every queue kind hands out
//! events in batches to its sink's delivery driver and is told when a batch is finished
//! ([`SinkQueue::finish`]), so durable kinds can acknowledge it.

pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::config::error::{ConfigError, Locator};
use crate::config::{ByteSize, HumanDuration};
use crate::event::Event;
pub use memory::MemoryQueue;

/// What a full queue does with one more event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The producer waits for room (HTTP callers are held up to `accept_timeout`).
    #[default]
    Block,
    /// The incoming event is dropped and counted.
    DropNewest,
    /// The oldest queued events are dropped and counted to make room.
    DropOldest,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    #[default]
    Memory,
}

/// `queue = { type = "memory", max_events = 100000, max_bytes = "256MiB", when_full = "block" }`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(rename = "type", default)]
    pub kind: QueueKind,
    #[serde(default = "QueueConfig::default_max_events")]
    pub max_events: usize,
    #[serde(default = "QueueConfig::default_max_bytes")]
    pub max_bytes: ByteSize,
    #[serde(default)]
    pub when_full: WhenFull,
}

impl QueueConfig {
    fn default_max_events() -> usize {
        100_000
    }
    fn default_max_bytes() -> ByteSize {
        ByteSize::mib(256)
    }

    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.max_events == 0 {
            errors.push(locator.error(
                &format!("{prefix}.max_events"),
                "expected at least 1, found 0",
            ));
        }
        if self.max_bytes.0 == 0 {
            errors.push(locator.error(
                &format!("{prefix}.max_bytes"),
                "expected at least 1 byte, found 0",
            ));
        }
        errors
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            kind: QueueKind::Memory,
            max_events: Self::default_max_events(),
            max_bytes: Self::default_max_bytes(),
            when_full: WhenFull::Block,
        }
    }
}

/// How a sink wants its events grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    /// How long to wait for a batch to fill once its first event is there.
    pub timeout: Duration,
}

impl BatchLimits {
    /// One event per delivery, sent at once.
    pub const SINGLE: BatchLimits = BatchLimits {
        max_events: 1,
        max_bytes: usize::MAX,
        timeout: Duration::ZERO,
    };
}

/// `batch = { max_events = 1000, max_bytes = "1MiB", timeout = "10ms" }`
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    #[serde(default = "BatchConfig::default_max_events")]
    pub max_events: usize,
    #[serde(default = "BatchConfig::default_max_bytes")]
    pub max_bytes: ByteSize,
    #[serde(default = "BatchConfig::default_timeout")]
    pub timeout: HumanDuration,
}

impl BatchConfig {
    fn default_max_events() -> usize {
        1000
    }
    fn default_max_bytes() -> ByteSize {
        ByteSize::mib(1)
    }
    fn default_timeout() -> HumanDuration {
        HumanDuration::from_millis(10)
    }

    pub fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_events: self.max_events,
            max_bytes: self.max_bytes.as_usize(),
            timeout: self.timeout.0,
        }
    }

    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.max_events == 0 {
            errors.push(locator.error(
                &format!("{prefix}.max_events"),
                "expected at least 1, found 0",
            ));
        }
        if self.max_bytes.0 == 0 {
            errors.push(locator.error(
                &format!("{prefix}.max_bytes"),
                "expected at least 1 byte, found 0",
            ));
        }
        errors
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: Self::default_max_events(),
            max_bytes: Self::default_max_bytes(),
            timeout: Self::default_timeout(),
        }
    }
}

/// Why a queue did not take an event. The queue has already counted the drop in its ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("the queue is full")]
    Full,
    #[error("the queue is closed: the relay is shutting down")]
    Closed,
}

/// Events handed to a sink's driver together.
pub struct Batch {
    pub events: Vec<Arc<Event>>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.events.len()
    }
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// The queue a sink owns, whatever its kind.
pub enum SinkQueue {
    Memory(MemoryQueue),
}

impl SinkQueue {
    /// Offers one event; waits for room until `deadline` when the policy is `block`.
    pub async fn push(&self, event: Arc<Event>, deadline: Instant) -> Result<(), PushError> {
        match self {
            SinkQueue::Memory(q) => q.push(event, deadline).await,
        }
    }

    /// The next batch; empty only once the queue is closed and drained.
    pub async fn next_batch(&self, limits: BatchLimits) -> Batch {
        match self {
            SinkQueue::Memory(q) => Batch {
                events: q.pop_batch(limits).await,
            },
        }
    }

    /// The batch is done with (delivered, dropped or dead-lettered): durable kinds forget it.
    pub fn finish(&self, _batch: &Batch) {
        match self {
            SinkQueue::Memory(_) => {}
        }
    }

    /// Refuses new events; the driver drains what is left.
    pub fn close(&self) {
        match self {
            SinkQueue::Memory(q) => q.close(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            SinkQueue::Memory(q) => q.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
