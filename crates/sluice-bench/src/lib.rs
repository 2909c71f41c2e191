//! `sluice bench`: the project's one measuring stick.
//!
//! It drives the relay as an external process (never linking it), so the same harness measures
//! Sluice, a peer relay (rsyslog) and no relay at all (the baseline), with the same senders,
//! receivers and bookkeeping. The scenarios are DESIGN.md §7's S1–S5.
//!
//! Parts, one per module:
//! - [`payload`]: the benchmark event (stream, sequence, send timestamp, padding) and its parser;
//! - [`senders`]: the load generator (TCP, Unix, UDP, HTTP; paced or flat out);
//! - [`receivers`]: TCP and HTTP destinations, steerable for outages and slow sinks;
//! - [`body`]: decoding a sink's HTTP body (ndjson, JSON array, Splunk HEC, gzip);
//! - [`tracker`]: unique / duplicate / missing / reordered counts and latency;
//! - [`procstat`]: the relay's CPU and peak RSS from `/proc`;
//! - [`relay`]: the relay's generated config, its process and its `/stats` ledger;
//! - [`rsyslog`]: rsyslog as the peer for S1;
//! - [`scenario`]: the scenarios and one measured run;
//! - [`disk_ceiling`]: with a disk queue and `--baseline`, what the disk alone syncs;
//! - [`report`] and [`plot`]: tables, JSON and SVG.

pub mod body;
pub mod disk_ceiling;
pub mod payload;
pub mod plot;
pub mod procstat;
pub mod receivers;
pub mod relay;
pub mod report;
pub mod rsyslog;
pub mod scenario;
pub mod senders;
pub mod tracker;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::relay::{QueueSpec, SinkKind, SourceKind};
use crate::report::{RunResult, Summary};
use crate::scenario::{OutageMode, Plan, ScenarioName, Target};

/// S1's queue, and the one `--against-memory` compares a disk queue with.
const S1_QUEUE: QueueSpec = QueueSpec::Memory {
    max_events: 100_000,
    when_full: "block",
};

/// Peer relays `--peer` can run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Rsyslog,
}

/// Queue kinds `--queue` can choose.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Memory,
    Disk,
}

/// Parses a duration as the relay's config does (`250ms`, `5s`, `2m`, `1h 30m`: humantime);
/// a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration like 250ms, 5s or 2m, found {s:?} ({e})"))
}

/// `sluice bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenario from DESIGN.md §7.
    #[arg(long, value_enum, default_value = "s3")]
    pub scenario: ScenarioName,
    /// Events to send in total (split over the connections). Default: per scenario.
    #[arg(long)]
    pub events: Option<u64>,
    /// Send for this long instead of a fixed number of events (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Sender connections, each its own stream. Default: per scenario (4, or 32 for HTTP).
    #[arg(long)]
    pub connections: Option<u32>,
    /// Event size in bytes, newline included.
    #[arg(long, default_value_t = payload::DEFAULT_SIZE)]
    pub size: usize,
    /// Total events per second; 0 = as fast as possible. Default: per scenario.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Measured runs per target; the summary is the median with min and max.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Draw throughput over time and the latency distribution into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Also run the scenario through this peer relay (S1 only).
    #[arg(long, value_enum)]
    pub peer: Option<Peer>,
    /// Also run the sender straight into the receiver: the no-relay ceiling.
    #[arg(long)]
    pub baseline: bool,
    /// Do not run Sluice itself (only the baseline and/or the peer).
    #[arg(long)]
    pub no_sluice: bool,
    /// With a disk queue (S2): also run Sluice with S1's memory queue in every round, right
    /// after it, and print the disk / memory ratio of events/s per round and its median (the
    /// durable path's cost, as a ratio within one run: the machine's drift hits both alike).
    #[arg(long)]
    pub against_memory: bool,
    /// Keep each run's generated configs, logs and data directory.
    #[arg(long)]
    pub keep_config: bool,
    /// Override the relay's source.
    #[arg(long, value_enum)]
    pub source: Option<SourceKind>,
    /// Override the relay's sink.
    #[arg(long, value_enum)]
    pub sink: Option<SinkKind>,
    /// Override the sink's queue (S2's default is disk, the others memory).
    #[arg(long, value_enum)]
    pub queue: Option<QueueKind>,
    /// Source ack point (default: durable for S2 over HTTP, otherwise unset; a TCP source has
    /// none).
    #[arg(long, value_parser = ["received", "durable", "delivered"])]
    pub ack: Option<String>,
    /// HTTP sink encoding: ndjson | json_array.
    #[arg(long, default_value = "ndjson", value_parser = ["ndjson", "json_array"])]
    pub encoding: String,
    /// HTTP sink compression.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip"])]
    pub compression: String,
    /// S4: how long the upstream is away.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub outage: Duration,
    /// S4: how long after the first send the outage starts.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub outage_after: Duration,
    /// S4: how the upstream is away.
    #[arg(long, value_enum, default_value = "down")]
    pub outage_mode: OutageMode,
    /// S5: events per second the receiving end takes (the producer sends 3× that).
    #[arg(long, default_value_t = 50_000)]
    pub sink_rate: u64,
    /// How long to wait after the last send for the receiver to get everything.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub drain_timeout: Duration,
}

/// Resolves the scenario's defaults and the overrides into a plan.
pub fn plan(a: &BenchArgs) -> Result<Plan> {
    use ScenarioName::*;
    let http_in = matches!(a.scenario, S3 | S4);
    let source = a.source.unwrap_or(if http_in {
        SourceKind::Http
    } else {
        SourceKind::Tcp
    });
    let sink = a.sink.unwrap_or(if matches!(a.scenario, S1 | S2) {
        SinkKind::Tcp
    } else {
        SinkKind::Http
    });
    let connections = a
        .connections
        .unwrap_or(if source == SourceKind::Http { 32 } else { 4 });
    if connections == 0 {
        bail!("--connections: expected at least 1, found 0");
    }
    let outage_after = a.outage_after;
    let (default_events, default_duration, default_rate) = match a.scenario {
        S1 | S2 => (Some(1_000_000), None, 0),
        S3 => (Some(200_000), None, 0),
        S4 => (
            None,
            Some(outage_after + a.outage + Duration::from_secs(5)),
            5_000,
        ),
        S5 => (None, Some(Duration::from_secs(10)), 3 * a.sink_rate),
    };
    let (events, duration) = match (a.events, a.duration) {
        (None, None) => (default_events, default_duration),
        given => given,
    };
    let events_per_conn = events.map_or(u64::MAX, |e| (e / u64::from(connections)).max(1));
    let queue = match (a.queue, a.scenario) {
        (Some(QueueKind::Disk), _) | (None, S2) => QueueSpec::Disk { sync: "always" },
        (_, S5) => QueueSpec::Memory {
            max_events: 10_000,
            when_full: "drop_newest",
        },
        (_, S4) => QueueSpec::Memory {
            max_events: 1_000_000,
            when_full: "block",
        },
        _ => S1_QUEUE,
    };
    Ok(Plan {
        scenario: a.scenario,
        source,
        sink,
        connections,
        events_per_conn,
        duration,
        size: a.size,
        rate: a.rate.unwrap_or(default_rate),
        queue,
        // Only the HTTP source has an ack point a producer can see; a TCP source has no `ack`.
        ack: a
            .ack
            .clone()
            .or((a.scenario == S2 && source == SourceKind::Http).then(|| "durable".to_owned())),
        encoding: if a.encoding == "json_array" {
            "json_array"
        } else {
            "ndjson"
        },
        gzip: a.compression == "gzip",
        batch_max_events: 1000,
        concurrency: 4,
        outage: (a.scenario == S4).then_some((outage_after, a.outage, a.outage_mode)),
        sink_rate: (a.scenario == S5).then_some(a.sink_rate),
        drain_timeout: a.drain_timeout,
    })
}

/// The order of `targets` in round `run` (from 1): as given in odd rounds, reversed in even
/// ones, so that no target always runs first in its round (after the pause between rounds)
/// or always right after another one. Ratios paired by round, such as `--against-memory`'s,
/// are then free of that order's bias over an even number of rounds.
fn round_order<T>(targets: &[T], run: u32) -> Vec<&T> {
    if run % 2 == 0 {
        targets.iter().rev().collect()
    } else {
        targets.iter().collect()
    }
}

/// Runs the benchmark and prints the table (or JSON). `sluice_exe` is the sluice binary to start
/// (the caller passes `std::env::current_exe()`).
pub async fn run(args: BenchArgs, sluice_exe: PathBuf) -> Result<()> {
    let plan = plan(&args)?;
    let mut targets = Vec::new();
    if !args.no_sluice {
        if !sluice_exe.is_file() {
            bail!("the sluice binary {sluice_exe:?} does not exist (or pass --no-sluice)");
        }
        targets.push((Target::Sluice, Some(sluice_exe.clone())));
    }
    if args.against_memory {
        if args.no_sluice || !matches!(plan.queue, QueueSpec::Disk { .. }) {
            bail!(
                "--against-memory: expected Sluice with a disk queue (s2, or --queue disk), \
                 found {:?} with {}",
                plan.scenario,
                if args.no_sluice {
                    "--no-sluice"
                } else {
                    "a memory queue"
                }
            );
        }
        targets.push((Target::SluiceMemory, Some(sluice_exe)));
    }
    if args.peer == Some(Peer::Rsyslog) {
        if plan.source != SourceKind::Tcp || plan.sink != SinkKind::Tcp {
            bail!(
                "--peer rsyslog: expected a TCP-in, TCP-out scenario (s1), found {:?}",
                plan.scenario
            );
        }
        targets.push((Target::Rsyslog, Some(rsyslog::ensure_installed().await?)));
    }
    if args.baseline {
        targets.push((Target::Baseline, None));
    }
    if targets.is_empty() {
        bail!("nothing to measure: --no-sluice without --baseline or --peer");
    }
    let memory_plan = Plan {
        queue: S1_QUEUE,
        ..plan.clone()
    };
    let mut rows: Vec<RunResult> = Vec::new();
    let mut ceilings: Vec<disk_ceiling::Ceiling> = Vec::new();
    let measure_disk = args.baseline && matches!(plan.queue, QueueSpec::Disk { .. });
    // A target that fails is reported and not retried; the others still run and print.
    let mut failures: Vec<(Target, anyhow::Error)> = Vec::new();
    let runs = args.runs.max(1);
    // Alternate the targets within each round so drift on the machine hits them all alike.
    for run in 1..=runs {
        for (target, exe) in round_order(&targets, run) {
            if failures.iter().any(|(t, _)| t == target) {
                continue;
            }
            eprintln!("{:?} run {run}/{runs}: {target}…", plan.scenario);
            let plan = match target {
                Target::SluiceMemory => &memory_plan,
                _ => &plan,
            };
            match scenario::run_once(plan, *target, exe.as_deref(), run, args.keep_config).await {
                Ok(r) => {
                    eprintln!("  {:.0} events/s", r.events_per_sec);
                    rows.push(r);
                }
                Err(e) => {
                    eprintln!("  failed");
                    let e = e.context(format!("{:?} against {target}, run {run}", plan.scenario));
                    failures.push((*target, e));
                }
            }
        }
        if measure_disk {
            eprintln!("{:?} run {run}/{runs}: disk ceiling…", plan.scenario);
            let at = std::env::temp_dir();
            let size = plan.size;
            let measured = tokio::task::spawn_blocking(move || {
                disk_ceiling::measure(&at, Duration::from_millis(1500), size)
            })
            .await
            .context("disk ceiling task")??;
            ceilings.extend(measured);
        }
    }
    let ceilings = disk_ceiling::medians(&ceilings);
    let summaries: Vec<Summary> = targets
        .iter()
        .filter_map(|(t, _)| {
            Summary::of(&rows.iter().filter(|r| r.target == *t).collect::<Vec<_>>())
        })
        .collect();
    if let Some(path) = args.plot.as_ref().filter(|_| !rows.is_empty()) {
        let picks: Vec<&RunResult> = summaries
            .iter()
            .filter_map(|s| median_run(&rows, s))
            .collect();
        std::fs::write(path, plot::svg(&picks)).with_context(|| format!("writing {path:?}"))?;
    }
    if args.json {
        let doc =
            serde_json::json!({ "runs": rows, "summaries": summaries, "disk_ceilings": ceilings });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", report::table(&rows, &summaries));
        print!("{}", disk_ceiling::lines(&ceilings));
    }
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0).1),
        _ => {
            let all: Vec<String> = failures.iter().map(|(_, e)| format!("{e:#}")).collect();
            bail!("{} targets failed:\n{}", failures.len(), all.join("\n\n"))
        }
    }
}

/// The run of `s`'s target whose events/s is closest to the median.
fn median_run<'a>(rows: &'a [RunResult], s: &Summary) -> Option<&'a RunResult> {
    let m = s.events_per_sec?.median;
    rows.iter().filter(|r| r.target == s.target).min_by(|a, b| {
        (a.events_per_sec - m)
            .abs()
            .total_cmp(&(b.events_per_sec - m).abs())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn targets_take_turns_at_running_first() {
        let targets = ["disk", "memory", "baseline"];
        assert_eq!(round_order(&targets, 1), [&"disk", &"memory", &"baseline"]);
        assert_eq!(round_order(&targets, 2), [&"baseline", &"memory", &"disk"]);
        assert_eq!(round_order(&targets, 3), round_order(&targets, 1));
    }

    #[test]
    fn against_memory_wants_a_disk_queue() {
        let args = Cli::parse_from(["bench", "--scenario", "s1", "--against-memory"]).bench;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let exe = std::env::current_exe().unwrap();
        let err = rt.block_on(run(args, exe)).unwrap_err().to_string();
        assert!(
            err.contains("--against-memory") && err.contains("a memory queue"),
            "{err}"
        );
    }

    fn plan_of(argv: &[&str]) -> Plan {
        let args = Cli::parse_from(["bench"].iter().chain(argv)).bench;
        plan(&args).expect("valid plan")
    }

    #[test]
    fn scenarios_resolve_to_design_defaults() {
        let s1 = plan_of(&["--scenario", "s1"]);
        assert_eq!(
            (s1.source, s1.sink, s1.connections),
            (SourceKind::Tcp, SinkKind::Tcp, 4)
        );
        assert_eq!(
            (s1.events_per_conn, s1.rate, s1.ack.as_deref()),
            (250_000, 0, None)
        );
        let s2 = plan_of(&["--scenario", "s2"]);
        assert_eq!(s2.queue, QueueSpec::Disk { sync: "always" });
        assert_eq!(s2.ack.as_deref(), None, "a TCP source has no ack point");
        let s2h = plan_of(&["--scenario", "s2", "--source", "http"]);
        assert_eq!(s2h.ack.as_deref(), Some("durable"));
        let s3 = plan_of(&["--scenario", "s3"]);
        assert_eq!(
            (s3.source, s3.sink, s3.connections),
            (SourceKind::Http, SinkKind::Http, 32)
        );
        let s4 = plan_of(&["--scenario", "s4", "--outage", "10s"]);
        assert_eq!(s4.duration, Some(Duration::from_secs(17)));
        assert_eq!(s4.events_per_conn, u64::MAX);
        assert!(s4.outage.is_some() && s4.rate > 0);
        let s5 = plan_of(&["--scenario", "s5", "--sink-rate", "1000"]);
        assert_eq!((s5.rate, s5.sink_rate), (3000, Some(1000)));
        assert!(matches!(
            s5.queue,
            QueueSpec::Memory {
                when_full: "drop_newest",
                ..
            }
        ));
    }

    #[test]
    fn overrides_win_over_scenario_defaults() {
        let p = plan_of(&[
            "--scenario",
            "s5",
            "--source",
            "http",
            "--queue",
            "disk",
            "--events",
            "1000",
            "--connections",
            "8",
            "--rate",
            "0",
            "--compression",
            "gzip",
        ]);
        assert_eq!(
            (p.source, p.connections, p.events_per_conn, p.rate),
            (SourceKind::Http, 8, 125, 0)
        );
        assert_eq!((p.duration, p.gzip), (None, true));
        assert_eq!(p.queue, QueueSpec::Disk { sync: "always" });
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
