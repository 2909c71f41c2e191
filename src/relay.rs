//! A running relay: the topology of a [`Config`] wired into tasks, and its orderly end.
//!
//! Start: the admin listener first (so `/ready` answers 503 while the rest binds), then every
//! sink's queue and delivery driver, then every source's listener; `/ready` turns 200 when all
//! are bound. Shutdown: `/ready` turns 503, sources stop accepting and finish the requests they
//! serve, queues close, and drivers deliver what is queued until `shutdown_timeout` runs out.
//! What was still queued or in flight then is counted and reported.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, Readiness};
use crate::config::ByteSize;
use crate::config::Config;
use crate::config::SinkConfig;
use crate::event::IdGenerator;
use crate::ledger::ComponentLedger;
use crate::ledger::{ComponentKind, Ledger};
use crate::queue::disk::DiskOptions;
use crate::queue::{DiskQueue, MemoryQueue, Overflow, QueueKind, SinkQueue, SpillQueue, stranded};
use crate::sinks::{self, SinkSettings, driver};
use crate::sources::{self, Fanout, SourceContext};

/// Most of the shutdown time goes to draining queues; sources get a bounded share to finish
/// the requests they are serving.
const SOURCE_GRACE: Duration = Duration::from_secs(5);

pub struct Relay {
    pub ledger: Arc<Ledger>,
    /// Where each listener is bound (`admin` and each source by name).
    pub addresses: BTreeMap<String, SocketAddr>,
    pub node: u32,
    ready: Arc<Readiness>,
    stop_sources: CancellationToken,
    stop_admin: CancellationToken,
    sources: Vec<JoinHandle<()>>,
    sinks: Vec<(String, Arc<SinkQueue>, JoinHandle<()>)>,
    admin: JoinHandle<()>,
    shutdown_timeout: Duration,
    probe: Probe,
}

/// What a shutdown left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Events accepted but neither delivered nor dropped, in memory queues: lost.
    pub undelivered: u64,
    /// Events not yet delivered in disk queues: kept for the next start.
    pub kept_on_disk: u64,
    /// Whether every sink finished (memory queues drained, disk queues' in-flight batches done)
    /// within `shutdown_timeout`.
    pub drained: bool,
}

/// Reads, at any moment, how many accepted events would be lost or kept if the process
/// stopped now. Cheap to clone; used by the second-signal exit.
#[derive(Clone)]
pub struct Probe {
    ledger: Arc<Ledger>,
    queues: Vec<(String, Arc<SinkQueue>)>,
}

impl Probe {
    /// `(lost from memory, kept on disk)`: each sink's queued and in-flight events, split by
    /// where its queue holds them.
    pub fn pending(&self) -> (u64, u64) {
        let components = self.ledger.stats().components;
        let (mut lost, mut kept) = (0, 0);
        for (name, queue) in &self.queues {
            let Some(c) = components.iter().find(|c| &c.name == name) else {
                continue;
            };
            let pending = c.queued + c.in_flight;
            let on_disk = queue.on_disk().min(pending);
            kept += on_disk;
            lost += pending - on_disk;
        }
        (lost, kept)
    }
}

impl Relay {
    pub async fn start(config: &Config) -> anyhow::Result<Relay> {
        let node = match config.node_id {
            Some(node) => node,
            None => node_id(&config.data_dir),
        };
        let ledger = Arc::new(Ledger::new());
        let ready = Arc::new(Readiness::default());
        let stop_sources = CancellationToken::new();
        let stop_admin = CancellationToken::new();
        let mut addresses = BTreeMap::new();

        let admin = admin::start(
            config.admin.listen,
            format!("{node:08x}"),
            ledger.clone(),
            ready.clone(),
            stop_admin.clone(),
        )
        .await?;
        addresses.insert("admin".to_string(), admin.local_addr);

        let mut sinks = Vec::new();
        let mut probe_queues = Vec::new();
        let mut queues_of: BTreeMap<&str, Vec<Arc<SinkQueue>>> = BTreeMap::new();
        for sink in &config.sinks {
            let component =
                ledger.component(&sink.name, ComponentKind::Sink, sink.settings.type_name());
            let queue = {
                let (data_dir, sink, component) =
                    (config.data_dir.clone(), sink.clone(), component.clone());
                Arc::new(
                    tokio::task::spawn_blocking(move || open_queue(&data_dir, &sink, component))
                        .await??,
                )
            };
            probe_queues.push((sink.name.clone(), queue.clone()));
            for input in &sink.inputs {
                queues_of
                    .entry(input.as_str())
                    .or_default()
                    .push(queue.clone());
            }
            let task = start_sink(sink, queue.clone(), component)
                .with_context(|| format!("sinks.{}", sink.name))?;
            sinks.push((sink.name.clone(), queue, task));
        }

        let ids = Arc::new(IdGenerator::new(node));
        let mut sources = Vec::new();
        for source in &config.sources {
            let context = SourceContext {
                name: Arc::from(source.name.as_str()),
                fanout: Fanout::new(
                    queues_of
                        .get(source.name.as_str())
                        .cloned()
                        .unwrap_or_default(),
                ),
                ledger: ledger.component(
                    &source.name,
                    ComponentKind::Source,
                    source.settings.type_name(),
                ),
                ids: ids.clone(),
                shutdown: stop_sources.clone(),
                grace: SOURCE_GRACE.min(config.shutdown_timeout.0),
            };
            let running = sources::start(&source.settings, context).await?;
            if let Some(addr) = running.local_addr {
                addresses.insert(source.name.clone(), addr);
            }
            sources.push(running.task);
        }

        ready.watch(probe_queues.clone());
        ready.set(true);
        warn_about_stranded_queues(config, ledger.clone());
        info!(node = %format!("{node:08x}"), sources = sources.len(), sinks = sinks.len(), admin = %admin.local_addr, "Sluice is ready.");
        let probe_ledger = ledger.clone();
        Ok(Relay {
            ledger,
            addresses,
            node,
            ready,
            stop_sources,
            stop_admin,
            sources,
            sinks,
            admin: admin.task,
            shutdown_timeout: config.shutdown_timeout.0,
            probe: Probe {
                ledger: probe_ledger,
                queues: probe_queues,
            },
        })
    }

    /// Stops accepting, drains queues within `shutdown_timeout`, and reports what is left.
    pub async fn shutdown(self) -> ShutdownReport {
        let deadline = Instant::now() + self.shutdown_timeout;
        self.ready.set(false);
        self.stop_sources.cancel();
        for task in self.sources {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        for (_, queue, _) in &self.sinks {
            queue.close().await;
        }
        let mut drained = true;
        for (name, _, task) in self.sinks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                warn!(sink = %name, "Shutdown timeout reached before the sink drained.");
                drained = false;
            }
        }
        let (undelivered, kept_on_disk) = self.probe.pending();
        self.stop_admin.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin).await;
        ShutdownReport {
            undelivered,
            kept_on_disk,
            drained,
        }
    }

    pub fn probe(&self) -> Probe {
        self.probe.clone()
    }
}

/// The queue of one sink, as its config says.
/// Blocking: a disk queue's recovery reads its files (run it off the async workers).
/// Warns, in the background, about disk queue directories that no configured sink reads and
/// that still hold events (see [`crate::queue::stranded`]), and shows them in the ledger.
fn warn_about_stranded_queues(config: &Config, ledger: Arc<Ledger>) {
    let read: Vec<String> = config
        .sinks
        .iter()
        .filter(|sink| sink.queue.on_disk())
        .map(|sink| sink.name.clone())
        .collect();
    let data_dir = config.data_dir.clone();
    tokio::task::spawn_blocking(move || {
        let read: Vec<&str> = read.iter().map(String::as_str).collect();
        let found = stranded::find(&data_dir, &read);
        // In the ledger before the warning is logged, so whoever reads the one finds the other.
        ledger.set_stranded(found.iter().cloned().map(Into::into).collect());
        stranded::warn_each(&found);
    });
}

fn open_queue(
    data_dir: &Path,
    sink: &SinkConfig,
    ledger: Arc<ComponentLedger>,
) -> anyhow::Result<SinkQueue> {
    let q = &sink.queue;
    let memory = || {
        MemoryQueue::new(
            q.max_events(),
            q.max_bytes().as_usize(),
            q.when_full,
            ledger.clone(),
        )
    };
    let disk = |max_bytes: ByteSize| {
        let dir = data_dir.join("queues").join(&sink.name);
        let options = DiskOptions {
            max_bytes: max_bytes.0,
            max_record_bytes: u32::try_from(q.max_event_bytes(max_bytes).0).unwrap_or(u32::MAX),
            sync: q.sync().policy(),
            sync_gather: q.sync_gather.map(|g| g.0),
            preallocate: q.preallocate.unwrap_or(true),
            direct_io: q.direct_io.unwrap_or(true),
        };
        DiskQueue::open(&dir, options, q.when_full, ledger.clone()).with_context(|| {
            format!(
                "sinks.{}.queue: cannot open the disk queue in {}",
                sink.name,
                dir.display()
            )
        })
    };
    Ok(match (q.kind, q.overflow) {
        (QueueKind::Memory, None) => SinkQueue::Memory(memory()),
        (QueueKind::Memory, Some(Overflow::Disk)) => SinkQueue::Spill(Box::new(SpillQueue::new(
            memory(),
            disk(q.overflow_max_bytes.unwrap_or(ByteSize::gib(10)))?,
        ))),
        (QueueKind::Disk, _) => SinkQueue::Disk(disk(q.max_bytes())?),
    })
}

fn start_sink(
    sink: &SinkConfig,
    queue: Arc<SinkQueue>,
    ledger: Arc<crate::ledger::ComponentLedger>,
) -> anyhow::Result<JoinHandle<()>> {
    let delivery = sink.delivery;
    Ok(match &sink.settings {
        SinkSettings::HttpForward(c) => driver::spawn(
            sinks::http_forward::HttpForward::new(c, delivery.concurrency)?,
            queue,
            delivery,
            ledger,
        ),
        SinkSettings::Http(c) => driver::spawn(
            sinks::http::HttpBatch::new(c, delivery.concurrency)?,
            queue,
            delivery,
            ledger,
        ),
        SinkSettings::Stdout(c) => {
            driver::spawn(sinks::stdout::Stdout::new(c), queue, delivery, ledger)
        }
        SinkSettings::Blackhole(c) => {
            driver::spawn(sinks::blackhole::Blackhole::new(c), queue, delivery, ledger)
        }
        SinkSettings::Tcp(c) => {
            driver::spawn(sinks::socket::StreamSink::tcp(c), queue, delivery, ledger)
        }
        SinkSettings::Udp(c) => driver::spawn(sinks::udp::UdpSink::new(c), queue, delivery, ledger),
        SinkSettings::Unix(c) => {
            driver::spawn(sinks::socket::StreamSink::unix(c), queue, delivery, ledger)
        }
        SinkSettings::File(c) => driver::spawn(
            sinks::file::FileSink::new(c, &sink.name),
            queue,
            delivery,
            ledger,
        ),
    })
}

/// This node's id: kept in `data_dir/node_id` so event ids stay stable across restarts; a
/// random one (with a warning) when the directory cannot be written.
fn node_id(data_dir: &Path) -> u32 {
    let path = data_dir.join("node_id");
    if let Some(id) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| u32::from_str_radix(text.trim(), 16).ok())
    {
        return id;
    }
    let id = fastrand::u32(..);
    let written = std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&path, format!("{id:08x}\n")));
    if let Err(error) = written {
        warn!(path = %path.display(), %error, "Cannot keep the node id; event ids will differ after a restart.");
    }
    id
}
