//! The ledger: for every component, where each event it received went.
//!
//! ```text
//! received = delivered + dropped{reason} + dead_lettered + queued + in_flight
//! ```
//!
//! - A **source** receives what producers sent (every request, line or frame, including ones it
//!   refuses); it *delivers* an event when every queue it feeds has taken it; `in_flight` counts
//!   events waiting for a queue with room. It never queues.
//! - A **sink** receives what its queue was offered; `queued` is what waits in the queue,
//!   `in_flight` what is being delivered (including retries), `delivered` what the destination
//!   confirmed.
//!
//! Counters live in a `prometheus-client` registry, so `/metrics` and `/stats` read the same
//! numbers. Each component resolves its counter handles once at start; the hot path is one
//! relaxed atomic add. A snapshot reads the numbers one by one, so while events move it can be
//! off by the events that moved during the read: [`Ledger::stats`] reads until two passes agree
//! and says whether it managed (`settled`). A settled snapshot that does not balance is a bug.
//!
//! Stream sources also list their open [`connections`] (read after the counters settle, so a
//! busy connection does not keep the snapshot from settling), and count the time their
//! connections waited before reading on, by [`WaitReason`] (the producers' backpressure: a
//! disk queue's sync, or its sink); disk queues hand their sync figures to `/metrics` through
//! [`disk_metrics`].

pub mod connections;
pub mod disk_metrics;
mod reasons;

pub use reasons::{AttemptOutcome, DropReason, WaitReason};

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use connections::{ConnectionRegistry, ConnectionsSnapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    Source,
    Sink,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    component: String,
    reason: DropReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    component: String,
    reason: WaitReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    component: String,
    outcome: AttemptOutcome,
}

/// Metric names (`_total` is added by the encoder to counters).
pub mod names {
    pub const RECEIVED: &str = "sluice_events_received";
    pub const DELIVERED: &str = "sluice_events_delivered";
    pub const DROPPED: &str = "sluice_events_dropped";
    pub const DEAD_LETTERED: &str = "sluice_events_dead_lettered";
    pub const QUEUE_EVENTS: &str = "sluice_queue_events";
    pub const QUEUE_BYTES: &str = "sluice_queue_bytes";
    pub const IN_FLIGHT: &str = "sluice_events_in_flight";
    pub const ATTEMPTS: &str = "sluice_delivery_attempts";
    pub const DURATION: &str = "sluice_delivery_duration_seconds";
    pub const CONNECTIONS_REJECTED: &str = "sluice_connections_rejected";
    pub const SOURCE_WAIT: &str = "sluice_source_wait_seconds";
    pub const STRANDED_QUEUES: &str = "sluice_stranded_queues";
}

/// A counter of seconds.
type Seconds = Counter<f64, AtomicU64>;

fn new_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

struct Families {
    received: Family<ComponentLabels, Counter>,
    delivered: Family<ComponentLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    dead_lettered: Family<ComponentLabels, Counter>,
    queue_events: Family<ComponentLabels, Gauge>,
    queue_bytes: Family<ComponentLabels, Gauge>,
    in_flight: Family<ComponentLabels, Gauge>,
    attempts: Family<AttemptLabels, Counter>,
    duration: Family<ComponentLabels, Histogram, fn() -> Histogram>,
    connections_rejected: Family<ComponentLabels, Counter>,
    source_wait: Family<WaitLabels, Seconds>,
}

/// Every component's counters, and the registry `/metrics` encodes.
pub struct Ledger {
    registry: Registry,
    families: Families,
    components: Arc<Mutex<Vec<Arc<ComponentLedger>>>>,
    started: Instant,
    /// Disk queue directories no sink reads that still hold events (see
    /// `crate::queue::stranded`), as found at start.
    stranded: Mutex<Vec<StrandedQueue>>,
    stranded_count: Gauge,
}

/// A disk queue directory holding events that no configured sink reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StrandedQueue {
    pub dir: String,
    /// Unacknowledged events (`None`: too large to count at start).
    pub events: Option<u64>,
    pub bytes: u64,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    pub fn new() -> Self {
        let families = Families {
            received: Family::default(),
            delivered: Family::default(),
            dropped: Family::default(),
            dead_lettered: Family::default(),
            queue_events: Family::default(),
            queue_bytes: Family::default(),
            in_flight: Family::default(),
            attempts: Family::default(),
            duration: Family::new_with_constructor(new_histogram as fn() -> Histogram),
            connections_rejected: Family::default(),
            source_wait: Family::default(),
        };
        let mut registry = Registry::default();
        registry.register(
            names::RECEIVED,
            "Events a component received",
            families.received.clone(),
        );
        registry.register(
            names::DELIVERED,
            "Events a component passed on (sources) or delivered (sinks)",
            families.delivered.clone(),
        );
        registry.register(
            names::DROPPED,
            "Events dropped, by reason",
            families.dropped.clone(),
        );
        registry.register(
            names::DEAD_LETTERED,
            "Events moved to a dead-letter queue",
            families.dead_lettered.clone(),
        );
        registry.register(
            names::QUEUE_EVENTS,
            "Events waiting in a sink's queue",
            families.queue_events.clone(),
        );
        registry.register(
            names::QUEUE_BYTES,
            "Bytes waiting in a sink's queue",
            families.queue_bytes.clone(),
        );
        registry.register(
            names::IN_FLIGHT,
            "Events being delivered, or waiting for queue room at a source",
            families.in_flight.clone(),
        );
        registry.register(
            names::ATTEMPTS,
            "Delivery attempts, by outcome",
            families.attempts.clone(),
        );
        registry.register(
            names::DURATION,
            "Time one delivery attempt took",
            families.duration.clone(),
        );
        registry.register(
            names::CONNECTIONS_REJECTED,
            "Connections closed because the source was at max_connections",
            families.connections_rejected.clone(),
        );
        registry.register(
            names::SOURCE_WAIT,
            "Time a source's connections waited before reading on, by what they waited for",
            families.source_wait.clone(),
        );
        let stranded_count = Gauge::default();
        registry.register(
            names::STRANDED_QUEUES,
            "Disk queue directories holding events that no sink reads (a sink renamed, removed or switched to memory)",
            stranded_count.clone(),
        );
        let components = Arc::new(Mutex::new(Vec::new()));
        registry.register_collector(Box::new(disk_metrics::DiskQueueCollector {
            components: components.clone(),
        }));
        Self {
            registry,
            families,
            components,
            started: Instant::now(),
            stranded: Mutex::new(Vec::new()),
            stranded_count,
        }
    }

    /// Records the stranded disk queue directories found at start (`/stats`, `/metrics`).
    pub fn set_stranded(&self, stranded: Vec<StrandedQueue>) {
        self.stranded_count.set(stranded.len() as i64);
        *self.stranded.lock() = stranded;
    }

    /// Creates the counters of one component.
    pub fn component(
        &self,
        name: &str,
        kind: ComponentKind,
        type_name: &'static str,
    ) -> Arc<ComponentLedger> {
        let f = &self.families;
        let labels = ComponentLabels {
            component: name.to_string(),
        };
        let component = Arc::new(ComponentLedger {
            name: name.to_string(),
            kind,
            type_name,
            received: f.received.get_or_create(&labels).clone(),
            delivered: f.delivered.get_or_create(&labels).clone(),
            dead_lettered: f.dead_lettered.get_or_create(&labels).clone(),
            dropped: DropReason::ALL.map(|reason| {
                f.dropped
                    .get_or_create(&DropLabels {
                        component: name.to_string(),
                        reason,
                    })
                    .clone()
            }),
            queued_events: f.queue_events.get_or_create(&labels).clone(),
            queued_bytes: f.queue_bytes.get_or_create(&labels).clone(),
            in_flight: f.in_flight.get_or_create(&labels).clone(),
            attempts: AttemptOutcome::ALL.map(|outcome| {
                f.attempts
                    .get_or_create(&AttemptLabels {
                        component: name.to_string(),
                        outcome,
                    })
                    .clone()
            }),
            duration: f.duration.get_or_create(&labels).clone(),
            connections_rejected: f.connections_rejected.get_or_create(&labels).clone(),
            waited: WaitReason::ALL.map(|reason| {
                f.source_wait
                    .get_or_create(&WaitLabels {
                        component: name.to_string(),
                        reason,
                    })
                    .clone()
            }),
            connections: ConnectionRegistry::default(),
            queue_detail: OnceLock::new(),
            disk_figures: OnceLock::new(),
        });
        self.components.lock().push(component.clone());
        component
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The ledger of every component; see the module doc for `settled`.
    pub fn stats(&self) -> Stats {
        let components = self.components.lock().clone();
        let read = || components.iter().map(|c| c.snapshot()).collect::<Vec<_>>();
        let mut previous = read();
        let mut settled = false;
        for _ in 0..8 {
            let current = read();
            let same = current == previous;
            previous = current;
            if same {
                settled = true;
                break;
            }
        }
        let balanced = previous.iter().all(|c| c.balanced);
        for (stats, component) in previous.iter_mut().zip(&components) {
            stats.connections = component.connections.snapshot();
            stats.queue = component.queue_detail.get().map(|detail| detail());
        }
        Stats {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            balanced,
            settled,
            components: previous,
            stranded_queues: self.stranded.lock().clone(),
        }
    }
}

/// One component's counters. Cloned handles into the registry: updating is an atomic add.
pub struct ComponentLedger {
    pub name: String,
    pub kind: ComponentKind,
    pub type_name: &'static str,
    pub received: Counter,
    pub delivered: Counter,
    pub dead_lettered: Counter,
    dropped: [Counter; DropReason::ALL.len()],
    pub queued_events: Gauge,
    pub queued_bytes: Gauge,
    pub in_flight: Gauge,
    attempts: [Counter; AttemptOutcome::ALL.len()],
    duration: Histogram,
    pub connections_rejected: Counter,
    waited: [Seconds; WaitReason::ALL.len()],
    /// Open connections of a stream source.
    pub connections: ConnectionRegistry,
    /// A sink's queue describing itself at `/stats` (the disk queue's syncs, segments, …).
    pub queue_detail: OnceLock<QueueDetail>,
    /// A sink's disk queue handing its sync figures to `/metrics`.
    pub disk_figures: OnceLock<disk_metrics::DiskFiguresProbe>,
}

/// Reads a queue's own figures for `/stats`.
pub type QueueDetail = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

impl ComponentLedger {
    pub fn dropped(&self, reason: DropReason, events: u64) {
        self.dropped[reason.index()].inc_by(events);
    }

    /// A connection of this source waited `time` for `reason` before reading on.
    pub fn waited(&self, reason: WaitReason, time: Duration) {
        self.waited[reason.index()].inc_by(time.as_secs_f64());
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].get()
    }

    pub fn attempt(&self, outcome: AttemptOutcome, seconds: f64) {
        self.attempts[outcome.index()].inc();
        self.duration.observe(seconds);
    }

    pub fn attempts(&self, outcome: AttemptOutcome) -> u64 {
        self.attempts[outcome.index()].get()
    }

    pub fn snapshot(&self) -> ComponentStats {
        // Read downstream first, received last: a concurrent event is then more likely counted
        // in received and not yet downstream than the reverse.
        let delivered = self.delivered.get();
        let dead_lettered = self.dead_lettered.get();
        let dropped: BTreeMap<&'static str, u64> = DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.dropped_count(*r)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let in_flight = self.in_flight.get().max(0) as u64;
        let queued = self.queued_events.get().max(0) as u64;
        let queued_bytes = self.queued_bytes.get().max(0) as u64;
        let received = self.received.get();
        let dropped_total: u64 = dropped.values().sum();
        let balanced = received == delivered + dropped_total + dead_lettered + queued + in_flight;
        ComponentStats {
            name: self.name.clone(),
            kind: self.kind,
            type_name: self.type_name,
            received,
            delivered,
            dropped,
            dropped_total,
            dead_lettered,
            queued,
            queued_bytes,
            in_flight,
            connections_rejected: self.connections_rejected.get(),
            waited_seconds: WaitReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.waited[r.index()].get()))
                .filter(|(_, s)| *s > 0.0)
                .collect(),
            balanced,
            connections: None,
            queue: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComponentStats {
    pub name: String,
    pub kind: ComponentKind,
    #[serde(rename = "type")]
    pub type_name: &'static str,
    pub received: u64,
    pub delivered: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    pub dropped_total: u64,
    pub dead_lettered: u64,
    pub queued: u64,
    pub queued_bytes: u64,
    pub in_flight: u64,
    pub connections_rejected: u64,
    /// Sources: seconds their connections waited before reading on, by cause (summed over
    /// connections; only causes that occurred).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub waited_seconds: BTreeMap<&'static str, f64>,
    pub balanced: bool,
    /// Stream sources only: their open connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionsSnapshot>,
    /// Sinks with a disk queue: its figures (bytes and segments on disk, syncs, corruption).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub uptime_seconds: f64,
    /// Every component balances.
    pub balanced: bool,
    /// Two consecutive reads agreed, so the numbers are one consistent moment.
    pub settled: bool,
    pub components: Vec<ComponentStats>,
    /// Disk queue directories holding events that no sink reads (only when there are any).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stranded_queues: Vec<StrandedQueue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_balances_and_shows_in_metrics() {
        let ledger = Ledger::new();
        let sink = ledger.component("up", ComponentKind::Sink, "http");
        sink.received.inc_by(5);
        sink.delivered.inc_by(2);
        sink.dropped(DropReason::QueueFull, 1);
        sink.queued_events.inc_by(2);
        let stats = ledger.stats();
        assert!(stats.settled && stats.balanced, "{stats:?}");
        assert_eq!(stats.components[0].dropped.get("queue_full"), Some(&1));
        sink.queued_events.dec();
        assert!(
            !ledger.stats().balanced,
            "an event that vanished unbalances the ledger"
        );
        let text = ledger.encode_metrics();
        assert!(
            text.contains("sluice_events_received_total{component=\"up\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("sluice_events_dropped_total{component=\"up\",reason=\"queue_full\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_sources_waits_add_up_by_cause_in_stats_and_metrics() {
        let ledger = Ledger::new();
        let source = ledger.component("in", ComponentKind::Source, "tcp");
        assert!(ledger.stats().components[0].waited_seconds.is_empty());
        source.waited(WaitReason::Sync, Duration::from_millis(1500));
        source.waited(WaitReason::Sync, Duration::from_millis(500));
        source.waited(WaitReason::Sink, Duration::from_millis(250));
        let waited = &ledger.stats().components[0].waited_seconds;
        assert_eq!(waited.get("sync"), Some(&2.0));
        assert_eq!(waited.get("sink"), Some(&0.25));
        let text = ledger.encode_metrics();
        assert!(
            text.contains("sluice_source_wait_seconds_total{component=\"in\",reason=\"sync\"} 2.0"),
            "{text}"
        );
    }
}
