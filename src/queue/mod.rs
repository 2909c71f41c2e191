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
//! Disk queue directories no sink reads any more are reported at start ([`stranded`]). A sink's
//! `queue = { … }` setting is parsed and checked in `config.rs` ([`QueueConfig`]).

pub mod codec;
mod config;
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
pub use config::{Overflow, QueueConfig, QueueKind, SyncSetting, WhenFull};
pub use disk::DiskQueue;
pub use memory::MemoryQueue;
pub use sluice_diskq::Seq;
pub use spill::SpillQueue;

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
