//! The bounded queue in front of every sink.
//!
//! A source never waits on a sink, only, at most, on the queue's policy for a full queue:
//! `block` (the source waits up to its `accept_timeout`, then the event is refused and counted
//! `queue_full`), `drop_newest` (the incoming event is refused and counted) or `drop_oldest`
//! (memory only: the oldest queued events are evicted and counted to make room). Every queue
//! kind hands out events in batches to its sink's delivery driver and is told when a batch is
//! finished ([`SinkQueue::finish`]), so the disk queue can acknowledge it.
//!
//! Kinds: `disk` (the default: [`disk`], durable across crashes) and `memory` ([`memory`]).
//! Disk queue directories no sink reads any more are reported at start ([`stranded`]).

pub mod codec;
pub mod disk;
pub mod memory;
pub mod spill;
pub mod stranded;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::config::error::{ConfigError, Locator};
use crate::config::{ByteSize, HumanDuration};
use crate::event::Event;
pub use disk::DiskQueue;
pub use memory::MemoryQueue;
pub use sluice_diskq::Seq;
pub use spill::SpillQueue;

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

/// One event offered to a queue, counted `received` when made. Its outcome is counted by the
/// queue; an offer abandoned before it had one (its future dropped while it waited for room,
/// as at shutdown) is counted `shutting_down` when dropped, so the ledger never loses it.
pub(crate) struct Offer<'a> {
    ledger: &'a crate::ledger::ComponentLedger,
    settled: bool,
}

impl<'a> Offer<'a> {
    pub(crate) fn new(ledger: &'a crate::ledger::ComponentLedger) -> Self {
        ledger.received.inc();
        Self {
            ledger,
            settled: false,
        }
    }

    /// The queue counted the outcome (taken, or dropped for a reason).
    pub(crate) fn settle(mut self) {
        self.settled = true;
    }
}

impl Drop for Offer<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.ledger
                .dropped(crate::ledger::DropReason::ShuttingDown, 1);
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
    #[error("the event is larger than the queue takes")]
    TooLarge,
    #[error("the disk queue cannot write")]
    Io,
}

/// Events handed to a sink's driver together.
pub struct Batch {
    pub events: Vec<Arc<Event>>,
    /// Disk queues: the record of each event, acknowledged when the batch is finished.
    pub seqs: Vec<Seq>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.events.len()
    }
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// What a queue promised when it took an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Held in memory.
    InMemory,
    /// Appended to the disk queue as record `seq`; durable once [`SinkQueue::wait_durable`] says so.
    OnDisk(Seq),
}

/// The queue a sink owns, whatever its kind.
pub enum SinkQueue {
    Memory(MemoryQueue),
    Disk(DiskQueue),
    Spill(Box<SpillQueue>),
}

impl SinkQueue {
    /// Offers one event; waits for room until `deadline` when the policy is `block`.
    pub async fn push(&self, event: Arc<Event>, deadline: Instant) -> Result<Accepted, PushError> {
        match self {
            SinkQueue::Memory(q) => q.push(event, deadline).await.map(|()| Accepted::InMemory),
            SinkQueue::Disk(q) => q.push(event, deadline).await.map(Accepted::OnDisk),
            SinkQueue::Spill(q) => q.push(event, deadline).await,
        }
    }

    /// Takes all of `events` at once if they fit now without waiting, counting them received
    /// (and appending them to a disk queue as one record); takes none and counts nothing
    /// otherwise: the caller then pushes them one by one, so the `when_full` policy and every
    /// drop reason apply as usual. Events nobody waits on only (sources with per-event answers
    /// push one by one).
    pub fn try_push_all(&self, events: &[Arc<Event>]) -> bool {
        match self {
            SinkQueue::Memory(q) => q.try_push_all(events),
            SinkQueue::Disk(q) => q.try_push_all(events),
            // Its tiers keep their order by pushing one at a time.
            SinkQueue::Spill(_) => false,
        }
    }

    /// Waits, at most `max`, while a disk queue's active reader is about to fall behind its
    /// in-memory tail; at once for other queues.
    pub async fn pace_to_reader(&self, max: Duration) {
        if let SinkQueue::Disk(q) = self {
            q.pace_to_reader(max).await;
        }
    }

    /// Resolves once what `accepted` promised survives a crash (per the disk queue's sync
    /// policy); at once for memory, which promises nothing of the kind.
    pub async fn wait_durable(&self, accepted: Accepted) -> Result<(), PushError> {
        match (self, accepted) {
            (SinkQueue::Disk(q), Accepted::OnDisk(seq)) => q.wait_durable(seq).await,
            (SinkQueue::Spill(q), Accepted::OnDisk(seq)) => q.wait_durable(seq).await,
            _ => Ok(()),
        }
    }

    /// The last record appended to the disk (tier) so far, if any.
    pub fn sync_mark(&self) -> Option<Seq> {
        match self {
            SinkQueue::Memory(_) => None,
            SinkQueue::Disk(q) => q.sync_mark(),
            SinkQueue::Spill(q) => q.sync_mark(),
        }
    }

    /// Resolves once the disk (tier) is durable up to `mark`.
    pub async fn wait_mark(&self, mark: Option<Seq>) -> Result<(), PushError> {
        match (self, mark) {
            (SinkQueue::Disk(q), Some(seq)) => q.wait_durable(seq).await,
            (SinkQueue::Spill(q), Some(seq)) => q.wait_durable(seq).await,
            _ => Ok(()),
        }
    }

    /// The next batch; empty only once the queue is closed and drained (memory) or closed
    /// (disk: what is left stays on disk).
    pub async fn next_batch(&self, limits: BatchLimits) -> Batch {
        let (events, seqs) = match self {
            SinkQueue::Memory(q) => (q.pop_batch(limits).await, Vec::new()),
            SinkQueue::Disk(q) => q.next_batch(limits).await,
            SinkQueue::Spill(q) => q.next_batch(limits).await,
        };
        Batch { events, seqs }
    }

    /// The batch is done with (delivered, dropped or dead-lettered): durable kinds forget it.
    pub fn finish(&self, batch: &Batch) {
        match self {
            SinkQueue::Memory(_) => {}
            SinkQueue::Disk(q) => q.finish(&batch.seqs),
            SinkQueue::Spill(q) => q.finish(&batch.seqs),
        }
    }

    /// Refuses new events. A memory queue is then drained by its driver; a disk queue syncs,
    /// checkpoints, and hands out nothing more.
    pub async fn close(&self) {
        match self {
            SinkQueue::Memory(q) => q.close(),
            SinkQueue::Disk(q) => q.close().await,
            SinkQueue::Spill(q) => q.close().await,
        }
    }

    /// Resolves when deliveries in flight may be abandoned because the queue keeps their events
    /// for the next start (a closing disk queue); never for memory, which must drain.
    pub async fn abandoned(&self) {
        match self {
            SinkQueue::Memory(_) | SinkQueue::Spill(_) => std::future::pending().await,
            SinkQueue::Disk(q) => q.closing().await,
        }
    }

    /// Events this queue keeps on disk (waiting or in flight): they survive a restart.
    pub fn on_disk(&self) -> u64 {
        match self {
            SinkQueue::Memory(_) => 0,
            SinkQueue::Disk(q) => q.len() as u64,
            SinkQueue::Spill(q) => q.on_disk(),
        }
    }

    /// Whether its disk (tier) failed a write or sync: it refuses events until the relay restarts.
    pub fn write_failed(&self) -> bool {
        match self {
            SinkQueue::Memory(_) => false,
            SinkQueue::Disk(q) => q.stats().write_failed,
            SinkQueue::Spill(q) => q.write_failed(),
        }
    }

    /// Whether every event it takes survives a restart.
    pub fn is_durable(&self) -> bool {
        matches!(self, SinkQueue::Disk(_))
    }

    pub fn len(&self) -> usize {
        match self {
            SinkQueue::Memory(q) => q.len(),
            SinkQueue::Disk(q) => q.len(),
            SinkQueue::Spill(q) => q.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
