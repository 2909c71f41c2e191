//! The scenarios S1–S5 of DESIGN.md §7 and one measured run of a scenario against one target.
//!
//! A [`Plan`] is a scenario with every knob resolved (transports, connections, events, rate,
//! queue, outage). [`run_once`] measures it against a [`Target`]: the relay (started from a
//! generated config), rsyslog (S1 only), or nothing at all (the baseline: sender straight into
//! the receiver, the ceiling of this machine). Each run gets fresh loopback ports, a fresh temp
//! directory and a fresh tracker; it ends when the receiver has every event the producer got
//! accepted, when nothing new has arrived for [`QUIET`], or at the drain timeout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::time::Instant;

use crate::payload;
use crate::procstat::{self, Sample};
use crate::receivers::{HttpControl, HttpReceiver, Mode, TcpReceiver, free_port};
use crate::relay::{Proc, QueueSpec, Relay, RelaySpec, SinkKind, SourceKind};
use crate::report::{Costs, RunResult};
use crate::senders::{self, LoadPlan, Transport};
use crate::tracker::{SharedTracker, Tracker};

/// How long the receiver may stay idle after the senders finish before the run is called done.
pub const QUIET: Duration = Duration::from_secs(2);

/// The scenario names shared with DESIGN.md and every report.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioName {
    /// TCP lines in, memory queue, TCP out; 4 connections.
    S1,
    /// S1 with the disk queue, sync = always (ack = durable when the source is HTTP).
    S2,
    /// One HTTP POST per event, 32 keep-alive connections, forwarded upstream by the http sink.
    S3,
    /// S3 while the upstream is away for --outage, then back: loss, drain time, producer p99.
    S4,
    /// Events at 3× what the sink takes, drop_newest: the producer never blocks, drops counted.
    S5,
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Sluice,
    /// Sluice with the memory queue of S1, beside a disk-queue scenario (`--against-memory`).
    #[serde(rename = "sluice-memory")]
    SluiceMemory,
    Rsyslog,
    Baseline,
    /// A relay the caller runs itself ([`run_external`]).
    External,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Sluice => "sluice",
            Target::SluiceMemory => "sluice-memory",
            Target::Rsyslog => "rsyslog",
            Target::Baseline => "baseline",
            Target::External => "external",
        })
    }
}

/// How the S4 upstream is away.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageMode {
    /// Not listening; open connections dropped.
    Down,
    /// Listening but answering 503.
    Unavailable,
}

/// A scenario with every knob resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: ScenarioName,
    pub source: SourceKind,
    pub sink: SinkKind,
    pub connections: u32,
    pub events_per_conn: u64,
    pub duration: Option<Duration>,
    pub size: usize,
    pub rate: u64,
    pub queue: QueueSpec,
    pub ack: Option<String>,
    pub encoding: &'static str,
    pub gzip: bool,
    pub batch_max_events: u64,
    pub concurrency: u32,
    /// S4: `(starts after, lasts, mode)`.
    pub outage: Option<(Duration, Duration, OutageMode)>,
    /// S5: events per second the receiving end takes.
    pub sink_rate: Option<u64>,
    pub drain_timeout: Duration,
}

impl Plan {
    /// Upper bound on sequence numbers per stream, for the tracker's bitsets.
    fn seq_limit(&self) -> u64 {
        if self.events_per_conn != u64::MAX {
            return self.events_per_conn;
        }
        let secs = self.duration.map_or(60, |d| d.as_secs() + 1);
        let per_conn = if self.rate == 0 {
            10_000_000
        } else {
            self.rate / u64::from(self.connections.max(1)) + 1
        };
        per_conn.saturating_mul(secs).saturating_mul(2).min(1 << 32)
    }
}

/// A private directory for one run's configs, logs and data; kept on disk when asked.
fn run_dir(keep: bool) -> Result<(Option<tempfile::TempDir>, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench-")
        .tempdir()
        .context("creating a temp dir")?;
    let path = dir.path().to_path_buf();
    Ok(if keep {
        (None, dir.keep())
    } else {
        (Some(dir), path)
    })
}

enum Receiver {
    Tcp(TcpReceiver),
    Http(HttpReceiver),
}

impl Receiver {
    fn addr(&self) -> SocketAddr {
        match self {
            Receiver::Tcp(r) => r.addr(),
            Receiver::Http(r) => r.addr(),
        }
    }
    fn control(&self) -> Option<Arc<HttpControl>> {
        match self {
            Receiver::Tcp(_) => None,
            Receiver::Http(r) => Some(r.control()),
        }
    }
}

/// A fresh tracker and the receiver `target` delivers into.
async fn receiver_for(plan: &Plan, target: Target) -> Result<(Receiver, Arc<SharedTracker>)> {
    let origin_ns = payload::now_ns();
    let tracker = Arc::new(SharedTracker::new(Tracker::new(
        plan.seq_limit(),
        origin_ns,
    )));
    // The baseline's receiver speaks the producer's protocol; otherwise the sink's.
    let kind = match (target, plan.source) {
        (Target::Baseline, SourceKind::Tcp) => SinkKind::Tcp,
        (Target::Baseline, SourceKind::Http) => SinkKind::Http,
        _ => plan.sink,
    };
    let sink_rate = plan.sink_rate.filter(|_| target != Target::Baseline);
    let receiver = match kind {
        SinkKind::Tcp => Receiver::Tcp(TcpReceiver::start(tracker.clone()).await?),
        SinkKind::Http => Receiver::Http(HttpReceiver::start(tracker.clone(), sink_rate).await?),
    };
    Ok((receiver, tracker))
}

/// What sits between the sender and the receiver during one run.
struct Middle {
    source_addr: SocketAddr,
    relay: Option<Relay>,
    peer: Option<Proc>,
}

/// Measures `plan` once against `target`. `exe` is the relay (sluice or rsyslogd) binary.
pub async fn run_once(
    plan: &Plan,
    target: Target,
    exe: Option<&Path>,
    run: u32,
    keep_config: bool,
) -> Result<RunResult> {
    let (_guard, dir) = run_dir(keep_config)?;
    let (receiver, tracker) = receiver_for(plan, target).await?;
    let middle = match target {
        Target::Baseline | Target::External => Middle {
            source_addr: receiver.addr(),
            relay: None,
            peer: None,
        },
        Target::Sluice | Target::SluiceMemory => {
            let exe = exe.context("no sluice binary given")?;
            let spec = RelaySpec {
                admin: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                source: plan.source,
                source_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                ack: plan.ack.clone(),
                sink: plan.sink,
                sink_addr: receiver.addr(),
                encoding: plan.encoding,
                gzip: plan.gzip,
                batch_max_events: plan.batch_max_events,
                concurrency: plan.concurrency,
                queue: plan.queue.clone(),
            };
            Middle {
                source_addr: spec.source_addr,
                relay: Some(Relay::start(exe, &spec, &dir).await.map_err(|e| {
                    if keep_config {
                        e
                    } else {
                        anyhow::anyhow!(
                            "{e:#}\n(rerun with --keep-config to keep the generated config)"
                        )
                    }
                })?),
                peer: None,
            }
        }
        Target::Rsyslog => {
            if plan.source != SourceKind::Tcp || plan.sink != SinkKind::Tcp {
                bail!("the rsyslog peer runs TCP in, TCP out only (scenario S1)");
            }
            let exe = exe.context("no rsyslogd binary given")?;
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            Middle {
                source_addr: listen,
                relay: None,
                peer: Some(crate::rsyslog::start(exe, &dir, listen, receiver.addr()).await?),
            }
        }
    };
    let r = measure(plan, target, run, receiver, &tracker, middle).await?;
    if keep_config {
        eprintln!(
            "run {run} ({target}): configs and logs kept in {}",
            dir.display()
        );
    }
    Ok(r)
}

/// Measures `plan` once through a relay the caller runs itself (tests use an in-process one):
/// `start` gets the receiver's address and returns the address the producer should send to.
pub async fn run_external<F, Fut>(plan: &Plan, start: F) -> Result<RunResult>
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<SocketAddr>>,
{
    let (receiver, tracker) = receiver_for(plan, Target::External).await?;
    let middle = Middle {
        source_addr: start(receiver.addr()).await?,
        relay: None,
        peer: None,
    };
    measure(plan, Target::External, 1, receiver, &tracker, middle).await
}

async fn measure(
    plan: &Plan,
    target: Target,
    run: u32,
    receiver: Receiver,
    tracker: &Arc<SharedTracker>,
    mut middle: Middle,
) -> Result<RunResult> {
    let pid = (middle.relay.as_ref().map(|r| r.proc.pid)).or(middle.peer.as_ref().map(|p| p.pid));
    let before = pid.map(procstat::sample).transpose()?;
    let me = std::process::id();
    let harness_before = procstat::sample(me).ok();
    let machine_before = procstat::machine().ok();
    let transport = match plan.source {
        SourceKind::Tcp => Transport::Tcp(middle.source_addr),
        SourceKind::Http => Transport::Http {
            addr: middle.source_addr,
            path: "/ingest".into(),
        },
    };
    let window = Arc::new(AtomicBool::new(false));
    let load = LoadPlan {
        transport,
        connections: plan.connections,
        events_per_conn: plan.events_per_conn,
        duration: plan.duration,
        size: plan.size,
        rate: plan.rate,
        window: Some(window.clone()),
    };
    let outage = match (plan.outage, receiver.control(), target) {
        (Some(o), Some(ctl), Target::Sluice | Target::SluiceMemory | Target::External) => {
            Some(tokio::spawn(outage(o, ctl, window, tracker.clone())))
        }
        _ => None,
    };
    let send_start_ns = payload::now_ns();
    let sent = senders::run(&load).await;
    let outage_end_ns = match outage {
        Some(t) => Some(t.await.context("outage task panicked")?),
        None => None,
    };
    let sent = match sent {
        Ok(s) => s,
        Err(e) => {
            let log = (middle.relay.as_ref().map(|r| r.proc.log_tail())).unwrap_or_default();
            stop(middle.relay.take().map(|r| r.proc)).await;
            stop(middle.peer.take()).await;
            return Err(e.context(format!("sending to {target} failed\n{log}")));
        }
    };
    let expected = sent.sent().saturating_sub(sent.rejected + sent.errors);
    wait_for_drain(tracker, expected, plan.drain_timeout).await;

    let after = match pid.map(procstat::sample).transpose() {
        Ok(a) => a,
        Err(e) => {
            // Most likely the relay died during the run: say so, with its last words.
            let mut procs: Vec<&mut Proc> = middle
                .relay
                .as_mut()
                .map(|r| &mut r.proc)
                .into_iter()
                .collect();
            procs.extend(middle.peer.as_mut());
            let mut msg = format!("{e:#}");
            for p in procs {
                if let Ok(Some(status)) = p.exited() {
                    msg = format!(
                        "{} exited ({status}) during the run:\n{}",
                        p.name,
                        p.log_tail()
                    );
                }
            }
            stop(middle.relay.map(|r| r.proc)).await;
            stop(middle.peer).await;
            bail!("{msg}");
        }
    };
    let harness_after = procstat::sample(me).ok();
    let machine_after = procstat::machine().ok();
    // Without /stats the row simply has no ledger (never a made-up one of zeros).
    let ledger = match &middle.relay {
        Some(r) => r
            .stats()
            .await
            .map_err(|e| eprintln!("warning: could not read the relay's /stats: {e:#}"))
            .ok(),
        None => None,
    };
    stop(middle.relay.map(|r| r.proc)).await;
    stop(middle.peer).await;
    drop(receiver);

    let tracked = tracker.with(|t| {
        (
            t.summary(&sent.sent_per_stream),
            t.timeline().to_vec(),
            crate::report::percentile_curve(t.latency()),
        )
    });
    let costs = Costs {
        relay: match (before, after) {
            (Some(b), Some(a)) => Some(Sample {
                cpu_secs: a.cpu_secs - b.cpu_secs,
                peak_rss_bytes: a.peak_rss_bytes,
            }),
            _ => None,
        },
        harness_cpu_secs: harness_before
            .zip(harness_after)
            .map(|(b, a)| a.cpu_secs - b.cpu_secs),
        machine: machine_before
            .zip(machine_after)
            .and_then(|(b, a)| b.share_until(a)),
    };
    Ok(RunResult::new(
        plan,
        target,
        run,
        &sent,
        tracked,
        costs,
        ledger,
        send_start_ns,
        outage_end_ns,
    ))
}

async fn stop(p: Option<Proc>) {
    if let Some(p) = p {
        let name = p.name;
        if let Err(e) = p.stop().await {
            eprintln!("warning: stopping {name}: {e:#}");
        }
    }
}

/// Runs the S4 outage; returns when it ended (ns since the epoch).
async fn outage(
    (after, lasts, mode): (Duration, Duration, OutageMode),
    ctl: Arc<HttpControl>,
    window: Arc<AtomicBool>,
    tracker: Arc<SharedTracker>,
) -> u64 {
    tokio::time::sleep(after).await;
    window.store(true, Ordering::Relaxed);
    ctl.set_mode(match mode {
        OutageMode::Down => Mode::Down,
        OutageMode::Unavailable => Mode::Unavailable,
    });
    tokio::time::sleep(lasts).await;
    ctl.set_mode(Mode::Up);
    window.store(false, Ordering::Relaxed);
    let end = payload::now_ns();
    tracker.with(|t| t.set_cutoff(end));
    end
}

async fn wait_for_drain(tracker: &SharedTracker, expected: u64, limit: Duration) {
    let start = Instant::now();
    let (mut last, mut last_change) = (tracker.unique(), Instant::now());
    while start.elapsed() < limit {
        let now = tracker.unique();
        if now >= expected {
            return;
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() >= QUIET {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
