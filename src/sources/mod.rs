//! Sources: listeners that turn what producers send into events.
//!
//! A source owns its listener and its wire decoding, and hands each event to a [`Fanout`]: the
//! queues of every sink that lists the source in its `inputs`. It never waits on a sink, only on
//! a full queue's policy. Adding a kind is one file and a line in each `match` of
//! [`SourceSettings`].

pub mod framing;
pub mod http;
pub mod rate_meter;
pub mod stream;
pub mod tcp;
pub mod udp;
pub mod unix;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use toml::Table;

use crate::config::error::{ConfigError, Locator};
use crate::config::typed::parse_table;
use crate::event::{DeliveryTracker, Event, IdGenerator};
use crate::ledger::{ComponentLedger, DropReason};
use crate::queue::{PushError, Seq, SinkQueue};

/// The kind-specific config of a source.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    Http(http::HttpSourceConfig),
    Tcp(tcp::TcpSourceConfig),
    Udp(udp::UdpSourceConfig),
    Unix(unix::UnixSourceConfig),
}

impl SourceSettings {
    pub const KINDS: &'static [&'static str] = &["http", "tcp", "udp", "unix"];

    pub fn parse(
        kind: &str,
        table: Table,
        prefix: &str,
        locator: &Locator,
    ) -> Result<Self, Vec<ConfigError>> {
        match kind {
            "http" => parse_table(table, prefix, locator).map(Self::Http),
            "tcp" => parse_table(table, prefix, locator).map(Self::Tcp),
            "udp" => parse_table(table, prefix, locator).map(Self::Udp),
            "unix" => parse_table(table, prefix, locator).map(Self::Unix),
            other => Err(vec![locator.error(
                &format!("{prefix}.type"),
                format!("unknown source type {other:?}"),
            )]),
        }
    }

    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        match self {
            Self::Http(c) => c.validate(prefix, locator),
            Self::Tcp(c) => c.validate(prefix, locator),
            Self::Udp(c) => c.validate(prefix, locator),
            Self::Unix(c) => c.validate(prefix, locator),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Http(_) => "http",
            Self::Tcp(_) => "tcp",
            Self::Udp(_) => "udp",
            Self::Unix(_) => "unix",
        }
    }

    /// The TCP address the source listens on, if it has one (a UDP port does not clash with
    /// a TCP one, so `udp` has none here).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Http(c) => Some(c.listen),
            Self::Tcp(c) => Some(c.listen),
            Self::Udp(_) | Self::Unix(_) => None,
        }
    }
}

/// The queues one source feeds. An event goes to all of them, shared, not copied.
#[derive(Clone, Default)]
pub struct Fanout {
    queues: Vec<Arc<SinkQueue>>,
}

impl Fanout {
    pub fn new(queues: Vec<Arc<SinkQueue>>) -> Self {
        Self { queues }
    }

    /// Offers `event` to every queue, waiting for room until `deadline`. Fails when any queue
    /// refused it; queues that took it keep it (delivery is at-least-once: a producer that sends
    /// again after a refusal may duplicate it there).
    pub async fn push(&self, event: Arc<Event>, deadline: Instant) -> Result<(), DropReason> {
        self.push_except(event, deadline, Took::NONE).await
    }

    /// Hands all of `events` (one read's worth, nobody waiting on them) to every queue at once
    /// where they fit now without waiting. `Err` names the queues that did take them; the caller
    /// then pushes each event to the others with [`Fanout::push_except`].
    pub fn try_push_all(&self, events: &[Arc<Event>]) -> Result<(), Took> {
        let mut took = Took::NONE;
        for (i, queue) in self.queues.iter().enumerate().take(Took::MAX_QUEUES) {
            if queue.try_push_all(events) {
                took.0 |= 1 << i;
            }
        }
        if took.0.count_ones() as usize == self.queues.len() {
            Ok(())
        } else {
            Err(took)
        }
    }

    /// [`Fanout::push`] to the queues that are not in `took`.
    pub async fn push_except(
        &self,
        event: Arc<Event>,
        deadline: Instant,
        took: Took,
    ) -> Result<(), DropReason> {
        let mut result = Ok(());
        for (i, queue) in self.queues.iter().enumerate() {
            if took.contains(i) {
                continue;
            }
            if let Err(error) = queue.push(event.clone(), deadline).await {
                result = Err(drop_reason(error));
            }
        }
        result
    }

    /// Like [`Fanout::push`], returning only at the ack point: `received` once every queue took
    /// the event; `durable` once every disk queue also synced it (a write or sync error fails it
    /// as `io_error`: it is never acknowledged); `delivered` once every sink delivered it, or
    /// gave up on it, or `delivered_timeout` passed (the event stays queued).
    pub async fn push_acked(
        &self,
        event: Arc<Event>,
        deadline: Instant,
        ack: AckPoint,
        delivered_timeout: Duration,
    ) -> Result<Acked, DropReason> {
        let delivered = (ack == AckPoint::Delivered).then(|| {
            let (tracker, done) = DeliveryTracker::new(self.queues.len());
            event.track_delivery(tracker);
            done
        });
        let mut accepted = Vec::with_capacity(self.queues.len());
        let mut result = Ok(());
        for queue in &self.queues {
            match queue.push(event.clone(), deadline).await {
                Ok(promise) => accepted.push((queue, promise)),
                Err(error) => result = Err(drop_reason(error)),
            }
        }
        result?;
        if ack != AckPoint::Received {
            for (queue, promise) in accepted {
                queue.wait_durable(promise).await.map_err(drop_reason)?;
            }
        }
        if let Some(done) = delivered {
            return Ok(match tokio::time::timeout(delivered_timeout, done).await {
                Ok(Ok(true)) => Acked::Yes,
                Ok(_) => Acked::Undeliverable,
                Err(_) => Acked::TimedOut,
            });
        }
        Ok(Acked::Yes)
    }

    /// Where each disk queue this source feeds has appended up to, now: a mark to wait on with
    /// [`Fanout::wait_marks`]. (A watermark: it covers other producers' events appended before
    /// it too, which is what lets one sync serve them all.)
    pub fn sync_marks(&self) -> Vec<Option<Seq>> {
        self.queues.iter().map(|q| q.sync_mark()).collect()
    }

    /// Waits, at most `max` per queue, while a disk queue this source feeds has an active
    /// reader about to fall behind its in-memory tail (see `DiskQueue::pace_to_reader`).
    pub async fn pace_to_readers(&self, max: Duration) {
        for queue in &self.queues {
            queue.pace_to_reader(max).await;
        }
    }

    /// Waits until the disk queues are synced up to `marks`.
    pub async fn wait_marks(&self, marks: &[Option<Seq>]) -> Result<(), DropReason> {
        for (queue, mark) in self.queues.iter().zip(marks) {
            queue.wait_mark(*mark).await.map_err(drop_reason)?;
        }
        Ok(())
    }

    /// Whether any queue this source feeds is durable (so `durable` acks mean something).
    pub fn any_durable(&self) -> bool {
        self.queues.iter().any(|q| q.is_durable())
    }
}

/// The queues of a [`Fanout`] that took a batch, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Took(u64);

impl Took {
    pub const NONE: Took = Took(0);
    /// Queues past this position never take a batch; they are pushed one event at a time.
    const MAX_QUEUES: usize = 64;

    fn contains(self, i: usize) -> bool {
        i < Self::MAX_QUEUES && self.0 & (1 << i) != 0
    }
}

fn drop_reason(error: PushError) -> DropReason {
    match error {
        PushError::Full => DropReason::QueueFull,
        PushError::Closed => DropReason::ShuttingDown,
        PushError::TooLarge => DropReason::FrameTooLarge,
        PushError::Io => DropReason::IoError,
    }
}

/// How an accepted event's ack point ended. The source handed the event on in every case: the
/// sinks' ledgers account for what happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acked {
    Yes,
    /// `delivered`: a sink gave up on it (rejected, or out of retries).
    Undeliverable,
    /// `delivered`: not delivered in time; it is still queued.
    TimedOut,
}

/// When a source tells its producer an event is accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckPoint {
    /// In every queue (memory or disk), not necessarily synced.
    Received,
    /// Synced to every disk queue it went to (the default when the source feeds a disk queue).
    #[default]
    Durable,
    /// Delivered by every sink that took it.
    Delivered,
}

/// What every source gets to run.
pub struct SourceContext {
    pub name: Arc<str>,
    pub fanout: Fanout,
    pub ledger: Arc<ComponentLedger>,
    pub ids: Arc<IdGenerator>,
    pub shutdown: CancellationToken,
    /// How long open connections get to finish once shutdown begins.
    pub grace: Duration,
}

/// A source whose listener is bound.
pub struct RunningSource {
    pub local_addr: Option<SocketAddr>,
    pub task: JoinHandle<()>,
}

/// Binds a TCP listener for source `name`; the error says which source and address.
pub async fn bind_tcp(
    name: &str,
    addr: SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted relay can listen again at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    let listener =
        listen().map_err(|e| anyhow::anyhow!("sources.{name}: cannot listen on {addr}: {e}"))?;
    let local_addr = listener.local_addr()?;
    Ok((listener, local_addr))
}

/// Connections the kernel completes and holds for a TCP source before it accepts them (capped
/// by `net.core.somaxconn`). `TcpListener::bind` asks for 1024: when thousands of producers
/// reconnect at once (a relay restart), the rest of their handshakes were dropped and retried
/// for up to half a minute.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds the source's listener and starts serving; errors say which source and address.
pub async fn start(
    settings: &SourceSettings,
    context: SourceContext,
) -> anyhow::Result<RunningSource> {
    match settings {
        SourceSettings::Http(config) => http::start(config.clone(), context).await,
        SourceSettings::Tcp(config) => tcp::start(config.clone(), context).await,
        SourceSettings::Udp(config) => udp::start(config.clone(), context).await,
        SourceSettings::Unix(config) => unix::start(config.clone(), context).await,
    }
}
