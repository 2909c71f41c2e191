//! Disk queue figures on `/metrics`, read from each disk queue when Prometheus scrapes.
//!
//! The ledger's counters say where events went; these say what durability cost: how many
//! `fdatasync`s a sink's disk queue made and how many events they covered (their ratio is the
//! group commit's batch size), how many bytes its segments hold, and how long appends waited
//! to become durable: `sluice_queue_ack_wait_seconds`, one sample per event (from its append
//! to the release of its waiters: the durable ack's wait), and `sluice_queue_sync_seconds`,
//! one sample per sync (the wait of the oldest event it covered). The disk queue keeps these
//! itself; a [`DiskFiguresProbe`] hands them over, so no hot path updates anything twice.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use sluice_diskq::LatencyHistogram;

use super::ComponentLedger;

pub const FSYNCS: &str = "sluice_queue_fsyncs";
pub const EVENTS_SYNCED: &str = "sluice_queue_events_synced";
pub const DISK_BYTES: &str = "sluice_queue_disk_bytes";
pub const SYNC_SECONDS: &str = "sluice_queue_sync_seconds";
pub const ACK_WAIT_SECONDS: &str = "sluice_queue_ack_wait_seconds";

/// Bucket bounds of the latency histograms: powers of two of microseconds, 64 µs to 33.6 s.
const BOUNDS: std::ops::RangeInclusive<Duration> =
    Duration::from_micros(64)..=Duration::from_micros(1 << 25);

/// A counter family: its name, help, and how to read it from a queue's figures.
type CounterSpec = (&'static str, &'static str, fn(&DiskFigures) -> u64);
/// A histogram family, the same way.
type HistogramSpec = (
    &'static str,
    &'static str,
    fn(&DiskFigures) -> &LatencyHistogram,
);

/// What one disk queue reports.
#[derive(Debug, Clone, Default)]
pub struct DiskFigures {
    pub fsyncs: u64,
    pub events_synced: u64,
    pub bytes_on_disk: u64,
    pub sync_latency: LatencyHistogram,
    /// Per event, from its append to becoming durable.
    pub ack_wait: LatencyHistogram,
}

/// Reads a disk queue's figures.
pub type DiskFiguresProbe = Box<dyn Fn() -> DiskFigures + Send + Sync>;

/// Encodes the figures of every component whose queue set a probe.
pub(super) struct DiskQueueCollector {
    pub components: Arc<Mutex<Vec<Arc<ComponentLedger>>>>,
}

impl std::fmt::Debug for DiskQueueCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskQueueCollector")
    }
}

impl DiskQueueCollector {
    fn figures(&self) -> Vec<(String, DiskFigures)> {
        self.components
            .lock()
            .iter()
            .filter_map(|c| {
                let probe: &OnceLock<DiskFiguresProbe> = &c.disk_figures;
                probe.get().map(|probe| (c.name.clone(), probe()))
            })
            .collect()
    }
}

impl Collector for DiskQueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.figures();
        if all.is_empty() {
            return Ok(());
        }
        let label = |name: &str| [("component", name.to_string())];
        let counters: [CounterSpec; 2] = [
            (
                FSYNCS,
                "fdatasync calls a sink's disk queue made on its segments.",
                |f| f.fsyncs,
            ),
            (
                EVENTS_SYNCED,
                "Events those syncs made durable (events per fsync is the group commit's size).",
                |f| f.events_synced,
            ),
        ];
        for (metric, help, value) in counters {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for (name, f) in &all {
                ConstCounter::new(value(f)).encode(family.encode_family(&label(name))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            DISK_BYTES,
            "Bytes in a sink's disk queue segments.",
            None,
            MetricType::Gauge,
        )?;
        for (name, f) in &all {
            let bytes = i64::try_from(f.bytes_on_disk).unwrap_or(i64::MAX);
            ConstGauge::new(bytes).encode(family.encode_family(&label(name))?)?;
        }
        let histograms: [HistogramSpec; 2] = [
            (
                ACK_WAIT_SECONDS,
                "Per event, how long it waited from its append to becoming durable (the durable ack's wait).",
                |f| &f.ack_wait,
            ),
            (
                SYNC_SECONDS,
                "Per sync, how long the oldest event it covered waited to become durable.",
                |f| &f.sync_latency,
            ),
        ];
        for (metric, help, histogram) in histograms {
            let mut family =
                encoder.encode_descriptor(metric, help, None, MetricType::Histogram)?;
            for (name, f) in &all {
                let h = histogram(f);
                let buckets: Vec<(f64, u64)> = h
                    .cumulative(BOUNDS)
                    .into_iter()
                    .map(|(bound, count)| (bound.as_secs_f64(), count))
                    // Whatever lies beyond the last bound is in `+Inf` (the total count).
                    .chain(std::iter::once((f64::INFINITY, h.count())))
                    .collect();
                let buckets = per_bucket(&buckets);
                family
                    .encode_family(&label(name))?
                    .encode_histogram::<NoLabelSet>(
                        h.sum().as_secs_f64(),
                        h.count(),
                        &buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

/// The text encoder wants each bucket's own count (it sums them up); ours are cumulative.
fn per_bucket(cumulative: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let mut previous = 0;
    cumulative
        .iter()
        .map(|&(bound, total)| {
            let own = total.saturating_sub(previous);
            previous = total;
            (bound, own)
        })
        .collect()
}
