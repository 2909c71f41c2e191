//! Result rows, their medians over runs, and how they are printed (plain table or JSON).
//!
//! Columns (see the crate README for the long version):
//! `events/s` unique events delivered per second (first send → last new arrival); `send/s` what
//! the producer got out per second; `MiB/s` = events/s × size; `p50/p99/max` end-to-end latency;
//! `prod p99` the producer's own p99 (HTTP response time); `CPU µs/ev` relay CPU per delivered
//! event; `RSS` the relay's peak resident set; `lost` sent and accepted but never delivered;
//! `dup` delivered more than once; `dropped` what the relay's ledger says it dropped.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procstat::{MachineShare, Sample};
use crate::relay::Ledger;
use crate::scenario::{Plan, ScenarioName, Target};
use crate::senders::SendReport;
use crate::tracker::{BUCKET_NS, TrackerSummary};

const MIB: f64 = 1024.0 * 1024.0;

/// What a run cost: the relay's CPU and peak RSS, this process's CPU (senders + receivers),
/// and how busy the whole machine was.
#[derive(Debug, Clone, Copy, Default)]
pub struct Costs {
    pub relay: Option<Sample>,
    pub harness_cpu_secs: Option<f64>,
    pub machine: Option<MachineShare>,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: ScenarioName,
    pub target: Target,
    pub run: u32,
    pub size: usize,
    pub sent: u64,
    pub rejected: u64,
    pub send_errors: u64,
    pub send_per_sec: f64,
    pub events_per_sec: f64,
    pub mib_per_sec: f64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    pub producer_p50_us: Option<f64>,
    pub producer_p99_us: Option<f64>,
    pub producer_outage_p99_us: Option<f64>,
    pub producer_max_stall_us: f64,
    pub cpu_us_per_event: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// The harness's own CPU per delivered event: when it nears the core count, the harness is
    /// the bottleneck, not the relay.
    pub harness_cpu_us_per_event: Option<f64>,
    /// How busy all the machine's cores were over the run, in percent, and how much of their
    /// time was idle waiting for a disk: a run far below 100 % busy is bound by latency (its
    /// parts wait for one another), not by CPU.
    pub machine_busy_pct: Option<f64>,
    pub machine_iowait_pct: Option<f64>,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub garbage: u64,
    pub bad_bodies: u64,
    pub drain_secs: Option<f64>,
    /// With a disk queue: its `fdatasync`s per second of the run, events per `fdatasync`, and
    /// the p99 wait for a sync (per sync, of the oldest event it covered: the durable ack's
    /// wait, as an upper bound).
    pub fsyncs_per_sec: Option<f64>,
    pub events_per_fsync: Option<f64>,
    pub sync_wait_p99_us: Option<f64>,
    pub ack_wait_p99_us: Option<f64>,
    /// With a disk queue: the share of events its sink read back from files (it fell behind
    /// the queue's in-memory tail), in percent.
    pub file_read_pct: Option<f64>,
    /// Stream sources feeding a disk queue: the share of the connections' time (run time ×
    /// connections) they waited before reading on, for the queue's sync and for its sink.
    pub waited_sync_pct: Option<f64>,
    pub waited_sink_pct: Option<f64>,
    pub ledger: Option<Ledger>,
    /// Missing (lost or refused) minus what the relay's ledger says it dropped: 0 when every
    /// event that did not arrive is accounted for.
    pub unaccounted: Option<i64>,
    /// Delivered events per 100 ms since the first send.
    #[serde(skip)]
    pub timeline: Vec<u64>,
    /// `(percentile, latency µs)` points for the plot.
    #[serde(skip)]
    pub latency_curve: Vec<(f64, f64)>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Points of the latency distribution at 0, 50, 90, 99, 99.9, … percentiles.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for q in [
        0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0,
    ] {
        out.push((q * 100.0, us(h.value_at_quantile(q))));
    }
    out
}

impl RunResult {
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename the list
    pub fn new(
        plan: &Plan,
        target: Target,
        run: u32,
        sent: &SendReport,
        (t, timeline, latency_curve): (TrackerSummary, Vec<u64>, Vec<(f64, f64)>),
        costs: Costs,
        ledger: Option<Ledger>,
        send_start_ns: u64,
        outage_end_ns: Option<u64>,
    ) -> RunResult {
        let window_s = t
            .last_unique_ns
            .map_or(0.0, |l| l.saturating_sub(send_start_ns) as f64 / 1e9);
        let events_per_sec = if window_s > 0.0 {
            t.unique as f64 / window_s
        } else {
            0.0
        };
        let q = |h: &Option<Histogram<u64>>, q: f64| {
            h.as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| us(h.value_at_quantile(q)))
        };
        // Events the producer was refused (non-2xx, I/O errors) were never promised.
        let lost = t.missing.saturating_sub(sent.rejected + sent.errors);
        // Refused events are drops too (the relay counts e.g. `queue_full` and answers 503).
        let unaccounted = ledger
            .as_ref()
            .map(|l| t.missing as i64 - l.sink_dropped as i64);
        let synced = ledger.as_ref().filter(|l| l.fsyncs > 0);
        // Only where connections waited at all (stream sources with `ack = durable`).
        let connection_secs = window_s * plan.connections as f64;
        let waited_pct = |f: fn(&Ledger) -> f64| {
            synced
                .filter(|l| connection_secs > 0.0 && l.source_waited_sync_s > 0.0)
                .map(|l| 100.0 * f(l) / connection_secs)
        };
        RunResult {
            scenario: plan.scenario,
            target,
            run,
            size: plan.size,
            sent: sent.sent(),
            rejected: sent.rejected,
            send_errors: sent.errors,
            send_per_sec: sent.sent() as f64 / sent.elapsed.as_secs_f64().max(1e-9),
            events_per_sec,
            mib_per_sec: events_per_sec * plan.size as f64 / MIB,
            latency_p50_us: t.latency_p50_us,
            latency_p99_us: t.latency_p99_us,
            latency_max_us: t.latency_max_us,
            producer_p50_us: q(&sent.latency, 0.5),
            producer_p99_us: q(&sent.latency, 0.99),
            producer_outage_p99_us: q(&sent.window_latency, 0.99),
            producer_max_stall_us: us(sent.max_stall_ns),
            cpu_us_per_event: costs
                .relay
                .filter(|_| t.unique > 0)
                .map(|c| c.cpu_secs * 1e6 / t.unique as f64),
            peak_rss_mib: costs.relay.map(|c| c.peak_rss_bytes as f64 / MIB),
            harness_cpu_us_per_event: costs
                .harness_cpu_secs
                .filter(|_| t.unique > 0)
                .map(|c| c * 1e6 / t.unique as f64),
            machine_busy_pct: costs.machine.map(|m| m.busy_pct),
            machine_iowait_pct: costs.machine.map(|m| m.iowait_pct),
            delivered: t.unique,
            lost,
            duplicates: t.duplicates,
            reordered: t.reordered,
            garbage: t.garbage,
            bad_bodies: t.bad_bodies,
            drain_secs: outage_end_ns
                .zip(t.backlog_drained_ns)
                .map(|(end, last)| last.saturating_sub(end) as f64 / 1e9),
            fsyncs_per_sec: synced
                .filter(|_| window_s > 0.0)
                .map(|l| l.fsyncs as f64 / window_s),
            events_per_fsync: synced.map(|l| l.events_synced as f64 / l.fsyncs as f64),
            sync_wait_p99_us: synced.and_then(|l| l.sync_wait_p99_ms).map(|ms| ms * 1e3),
            ack_wait_p99_us: synced.and_then(|l| l.ack_wait_p99_ms).map(|ms| ms * 1e3),
            file_read_pct: synced
                .filter(|l| l.events_synced > 0)
                .map(|l| 100.0 * l.file_read_events as f64 / l.events_synced as f64),
            waited_sync_pct: waited_pct(|l| l.source_waited_sync_s),
            waited_sink_pct: waited_pct(|l| l.source_waited_sink_s),
            ledger,
            unaccounted,
            timeline,
            latency_curve,
        }
    }

    /// Throughput over time as `(seconds, events/s)` points.
    pub fn throughput_points(&self) -> Vec<(f64, f64)> {
        let secs = BUCKET_NS as f64 / 1e9;
        self.timeline
            .iter()
            .enumerate()
            .map(|(i, &n)| ((i as f64 + 0.5) * secs, n as f64 / secs))
            .collect()
    }
}

/// The median, min and max of one column over runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// One target's runs summarised.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: ScenarioName,
    pub target: Target,
    pub runs: usize,
    pub events_per_sec: Option<Spread>,
    pub send_per_sec: Option<Spread>,
    pub mib_per_sec: Option<Spread>,
    pub latency_p50_us: Option<Spread>,
    pub latency_p99_us: Option<Spread>,
    pub latency_max_us: Option<Spread>,
    pub producer_p99_us: Option<Spread>,
    pub producer_outage_p99_us: Option<Spread>,
    pub producer_max_stall_us: Option<Spread>,
    pub cpu_us_per_event: Option<Spread>,
    pub harness_cpu_us_per_event: Option<Spread>,
    pub machine_busy_pct: Option<Spread>,
    pub machine_iowait_pct: Option<Spread>,
    pub peak_rss_mib: Option<Spread>,
    pub drain_secs: Option<Spread>,
    pub fsyncs_per_sec: Option<Spread>,
    pub events_per_fsync: Option<Spread>,
    pub sync_wait_p99_us: Option<Spread>,
    pub ack_wait_p99_us: Option<Spread>,
    pub file_read_pct: Option<Spread>,
    pub waited_sync_pct: Option<Spread>,
    pub waited_sink_pct: Option<Spread>,
    /// Totals over all runs.
    pub sent: u64,
    pub refused: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub garbage: u64,
    pub relay_dropped: u64,
    /// The relay's ledger after the last run.
    pub last_ledger: Option<Ledger>,
    pub unaccounted: Option<i64>,
}

impl Summary {
    pub fn of(rows: &[&RunResult]) -> Option<Summary> {
        let first = rows.first()?;
        let s =
            |f: &dyn Fn(&RunResult) -> Option<f64>| Spread::of(rows.iter().filter_map(|r| f(r)));
        Some(Summary {
            scenario: first.scenario,
            target: first.target,
            runs: rows.len(),
            events_per_sec: s(&|r| Some(r.events_per_sec)),
            send_per_sec: s(&|r| Some(r.send_per_sec)),
            mib_per_sec: s(&|r| Some(r.mib_per_sec)),
            latency_p50_us: s(&|r| Some(r.latency_p50_us)),
            latency_p99_us: s(&|r| Some(r.latency_p99_us)),
            latency_max_us: s(&|r| Some(r.latency_max_us)),
            producer_p99_us: s(&|r| r.producer_p99_us),
            producer_outage_p99_us: s(&|r| r.producer_outage_p99_us),
            producer_max_stall_us: s(&|r| Some(r.producer_max_stall_us)),
            cpu_us_per_event: s(&|r| r.cpu_us_per_event),
            harness_cpu_us_per_event: s(&|r| r.harness_cpu_us_per_event),
            machine_busy_pct: s(&|r| r.machine_busy_pct),
            machine_iowait_pct: s(&|r| r.machine_iowait_pct),
            peak_rss_mib: s(&|r| r.peak_rss_mib),
            drain_secs: s(&|r| r.drain_secs),
            fsyncs_per_sec: s(&|r| r.fsyncs_per_sec),
            events_per_fsync: s(&|r| r.events_per_fsync),
            sync_wait_p99_us: s(&|r| r.sync_wait_p99_us),
            ack_wait_p99_us: s(&|r| r.ack_wait_p99_us),
            file_read_pct: s(&|r| r.file_read_pct),
            waited_sync_pct: s(&|r| r.waited_sync_pct),
            waited_sink_pct: s(&|r| r.waited_sink_pct),
            sent: rows.iter().map(|r| r.sent).sum(),
            refused: rows.iter().map(|r| r.rejected + r.send_errors).sum(),
            lost: rows.iter().map(|r| r.lost).sum(),
            duplicates: rows.iter().map(|r| r.duplicates).sum(),
            reordered: rows.iter().map(|r| r.reordered).sum(),
            garbage: rows.iter().map(|r| r.garbage + r.bad_bodies).sum(),
            relay_dropped: rows
                .iter()
                .filter_map(|r| r.ledger.as_ref())
                .map(|l| l.sink_dropped)
                .sum(),
            last_ledger: rows.last().and_then(|r| r.ledger.clone()),
            unaccounted: rows
                .iter()
                .filter_map(|r| r.unaccounted)
                .reduce(|a, b| a + b),
        })
    }
}

fn human(x: f64) -> String {
    match x.abs() {
        a if a >= 1e6 => format!("{:.2}M", x / 1e6),
        a if a >= 1e4 => format!("{:.1}k", x / 1e3),
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

fn cell(s: Option<Spread>) -> String {
    s.map_or_else(|| "-".into(), |s| human(s.median))
}

/// The latency cell: microseconds below 10 ms, milliseconds above.
fn lat(s: Option<Spread>) -> String {
    match s {
        Some(s) if s.median >= 10_000_000.0 => format!("{}s", human(s.median / 1e6)),
        Some(s) if s.median >= 10_000.0 => format!("{}ms", human(s.median / 1000.0)),
        Some(s) => format!("{}µs", human(s.median)),
        None => "-".into(),
    }
}

/// The plain-text table: one line per run, then one summary line per target.
pub fn table(rows: &[RunResult], summaries: &[Summary]) -> String {
    let mut out = String::new();
    let header = format!(
        "{:<4} {:<13} {:>3} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>6} {:>5} {:>8}\n",
        "scen",
        "target",
        "run",
        "sent",
        "events/s",
        "MiB/s",
        "p50",
        "p99",
        "max",
        "prod p99",
        "CPU µs/ev",
        "RSS MiB",
        "lost",
        "dup",
        "reord",
        "dropped",
    );
    out.push_str(&header);
    let one = |x: f64| {
        Some(Spread {
            median: x,
            min: x,
            max: x,
        })
    };
    for r in rows {
        out.push_str(&format!(
            "{:<4} {:<13} {:>3} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>6} {:>5} {:>8}\n",
            format!("{:?}", r.scenario).to_lowercase(),
            r.target.to_string(),
            r.run,
            human(r.sent as f64),
            human(r.events_per_sec),
            human(r.mib_per_sec),
            lat(one(r.latency_p50_us)),
            lat(one(r.latency_p99_us)),
            lat(one(r.latency_max_us)),
            lat(r.producer_p99_us.and_then(one)),
            cell(r.cpu_us_per_event.and_then(one)),
            cell(r.peak_rss_mib.and_then(one)),
            r.lost,
            r.duplicates,
            r.reordered,
            r.ledger.as_ref().map_or_else(|| "-".into(), |l| l.sink_dropped.to_string()),
        ));
    }
    out.push('\n');
    for s in summaries {
        let range = s.events_per_sec.map_or_else(String::new, |e| {
            format!(" [{}–{}]", human(e.min), human(e.max))
        });
        out.push_str(&format!(
            "{} {} median of {}: {} events/s{}, {} MiB/s, sent {}/s, p50 {} p99 {} max {}, \
             producer p99 {} (longest stall {}), CPU {} µs/event (harness {}), \
             machine busy {} % (iowait {} %), peak RSS {} MiB; summed over the runs: refused {}, \
             lost {}, duplicates {}, reordered {}, garbage {}\n",
            format!("{:?}", s.scenario).to_lowercase(),
            s.target,
            s.runs,
            cell(s.events_per_sec),
            range,
            cell(s.mib_per_sec),
            cell(s.send_per_sec),
            lat(s.latency_p50_us),
            lat(s.latency_p99_us),
            lat(s.latency_max_us),
            lat(s.producer_p99_us),
            lat(s.producer_max_stall_us),
            cell(s.cpu_us_per_event),
            cell(s.harness_cpu_us_per_event),
            cell(s.machine_busy_pct),
            cell(s.machine_iowait_pct),
            cell(s.peak_rss_mib),
            s.refused,
            s.lost,
            s.duplicates,
            s.reordered,
            s.garbage,
        ));
        if s.producer_outage_p99_us.is_some() || s.drain_secs.is_some() {
            out.push_str(&format!(
                "  outage: producer p99 during it {}, time to drain after it {} s, relay dropped {}\n",
                lat(s.producer_outage_p99_us),
                cell(s.drain_secs),
                s.relay_dropped,
            ));
        }
        if s.fsyncs_per_sec.is_some() {
            out.push_str(&format!(
                "  durability: {} fsyncs/s, {} events per fsync, durable ack wait p99 {} \
                 (per event, from its append), sync wait p99 {} (per sync, its oldest \
                 event); {} % of events read back from files\n",
                cell(s.fsyncs_per_sec),
                cell(s.events_per_fsync),
                lat(s.ack_wait_p99_us),
                lat(s.sync_wait_p99_us),
                cell(s.file_read_pct),
            ));
        }
        if s.waited_sync_pct.is_some() {
            out.push_str(&format!(
                "  backpressure: the connections waited {} % of their time for syncs, {} % for \
                 the sink (pacing)\n",
                cell(s.waited_sync_pct),
                cell(s.waited_sink_pct),
            ));
        }
    }
    for s in summaries {
        if let Some(l) = &s.last_ledger {
            out.push_str(&format!(
                "{} relay ledger (last run): source received {}, sink received {} delivered {} \
                 dropped {} queued {} in flight {}, balanced {}; missing − dropped over all runs: {}\n",
                s.target,
                l.source_received,
                l.sink_received,
                l.sink_delivered,
                l.sink_dropped,
                l.sink_queued,
                l.sink_in_flight,
                l.balanced.map_or_else(|| "?".into(), |b| b.to_string()),
                s.unaccounted.unwrap_or(0),
            ));
        }
    }
    let find = |t: Target| {
        summaries
            .iter()
            .find(|s| s.target == t)
            .and_then(|s| s.events_per_sec)
    };
    if let (Some(a), Some(b)) = (find(Target::Sluice), find(Target::Rsyslog)) {
        out.push_str(&format!(
            "sluice/rsyslog events/s: {:.2}×\n",
            a.median / b.median
        ));
    }
    let p99 = |t: Target| {
        summaries
            .iter()
            .find(|s| s.target == t)
            .and_then(|s| s.latency_p99_us)
    };
    if let (Some(a), Some(b)) = (p99(Target::Sluice), p99(Target::Rsyslog)) {
        out.push_str(&format!(
            "sluice/rsyslog p99 latency: {:.2}× (lower is better; compare at a fixed --rate)\n",
            a.median / b.median
        ));
    }
    if let (Some(a), Some(b)) = (find(Target::Sluice), find(Target::Baseline)) {
        out.push_str(&format!(
            "sluice/baseline events/s: {:.0}% of the no-relay ceiling\n",
            100.0 * a.median / b.median
        ));
    }
    let runs: Vec<_> = rows
        .iter()
        .map(|r| (r.target, r.run, r.events_per_sec))
        .collect();
    out.push_str(&disk_against_memory(&runs));
    out
}

/// With `--against-memory`: the disk queue's events/s as a share of the memory queue's, per
/// round (each pair ran back to back), their median and, from six rounds on, a 95 % confidence
/// interval of that median; empty without such pairs. `runs` are (target, round, events/s).
fn disk_against_memory(runs: &[(Target, u32, f64)]) -> String {
    let memory = |round: u32| {
        runs.iter()
            .find(|(t, r, _)| *t == Target::SluiceMemory && *r == round)
            .map(|(_, _, events)| *events)
    };
    let ratios: Vec<f64> = runs
        .iter()
        .filter(|(t, _, _)| *t == Target::Sluice)
        .filter_map(|(_, round, events)| Some(events / memory(*round)?))
        .filter(|ratio| ratio.is_finite())
        .collect();
    let Some(spread) = Spread::of(ratios.iter().copied()) else {
        return String::new();
    };
    let each: Vec<String> = ratios
        .iter()
        .map(|r| format!("{:.0}%", 100.0 * r))
        .collect();
    let interval = match median_interval(&ratios) {
        Some((low, high)) => format!(
            "; the median is {:.0}–{:.0}% with 95% confidence",
            100.0 * low,
            100.0 * high
        ),
        None => String::new(),
    };
    format!(
        "sluice disk/memory queue events/s: median {:.0}% over {} rounds [{}]{interval}\n",
        100.0 * spread.median,
        ratios.len(),
        each.join(", ")
    )
}

/// A distribution-free 95 % confidence interval of the median of `values`: the order
/// statistics `k` and `n + 1 - k` (from 1), with `k` the largest such that fewer than `k` of
/// `n` fair coin flips come up heads with probability at most 2.5 %. Rounds on a noisy machine
/// are far from normal, so no mean and standard deviation. `None` below six values (five
/// already cannot reach 95 %: even the extremes cover only 94 %).
fn median_interval(values: &[f64]) -> Option<(f64, f64)> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    // P(heads = i) for i = 0, 1, …, summed while at most 2.5 %.
    let mut p = 0.5f64.powi(i32::try_from(n).ok()?);
    let (mut below, mut k) = (0.0, 0);
    while k < n / 2 {
        if below + p > 0.025 {
            break;
        }
        below += p;
        p *= (n - k) as f64 / (k + 1) as f64;
        k += 1;
    }
    (k >= 1).then(|| (sorted[k - 1], sorted[n - k]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_cells_pick_a_readable_unit() {
        let one = |x: f64| {
            Some(Spread {
                median: x,
                min: x,
                max: x,
            })
        };
        assert_eq!(lat(one(250.0)), "250µs");
        assert_eq!(lat(one(12_300.0)), "12.3ms");
        assert_eq!(lat(one(12_300_000.0)), "12.3s");
        assert_eq!(lat(None), "-");
    }

    #[test]
    fn disk_against_memory_pairs_each_round_and_takes_the_median() {
        let runs = [
            (Target::Sluice, 1, 150.0),
            (Target::SluiceMemory, 1, 200.0),
            (Target::Sluice, 2, 90.0),
            (Target::SluiceMemory, 2, 100.0),
            (Target::Sluice, 3, 50.0),
            (Target::SluiceMemory, 3, 100.0),
            // A round whose memory run failed has no ratio.
            (Target::Sluice, 4, 100.0),
        ];
        assert_eq!(
            disk_against_memory(&runs),
            "sluice disk/memory queue events/s: median 75% over 3 rounds [75%, 90%, 50%]\n"
        );
        assert_eq!(disk_against_memory(&runs[6..]), "");
        assert_eq!(
            disk_against_memory(&[(Target::Sluice, 1, 1.0), (Target::SluiceMemory, 1, 0.0)]),
            ""
        );
    }

    #[test]
    fn the_median_interval_widens_as_rounds_get_fewer() {
        let rounds = |n: usize| (1..=n).map(|i| i as f64).collect::<Vec<_>>();
        assert_eq!(median_interval(&rounds(5)), None);
        // Six rounds: only the extremes give 95 % (96.9 %).
        assert_eq!(median_interval(&rounds(6)), Some((1.0, 6.0)));
        // Ten: the 2nd and 9th (97.9 %); 40: the 14th and 27th (96.2 %).
        assert_eq!(median_interval(&rounds(10)), Some((2.0, 9.0)));
        assert_eq!(median_interval(&rounds(40)), Some((14.0, 27.0)));
        // The order of the rounds does not matter, and what is not a number is left out.
        let mut shuffled = rounds(10);
        shuffled.reverse();
        shuffled.push(f64::NAN);
        assert_eq!(median_interval(&shuffled), Some((2.0, 9.0)));
    }

    #[test]
    fn spread_is_median_min_max() {
        let s = Spread::of([3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of([4.0, 1.0]).expect("values");
        assert_eq!(s.median, 2.5);
        assert!(Spread::of([f64::NAN]).is_none());
    }
}
