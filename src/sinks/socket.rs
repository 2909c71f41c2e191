//! The stream socket sinks, `tcp` and `unix`: each batch written to one long-lived connection,
//! newline-delimited or octet-counted.
//!
//! Wire format (what a receiver reads):
//!
//! ```text
//! lines           payload LF, payload LF, …   (a payload that already ends in LF gets none)
//! octet_counting  LEN SP payload, …           (RFC 6587 §3.4.1; LEN in ASCII decimal)
//! ```
//!
//! Payloads are written as they are: a line payload that holds an LF inside splits into two
//! lines at the receiver (the line sources never produce one).
//!
//! Connection: opened on the first batch (within `connect_timeout`) and kept. Before each write
//! the sink checks whether the peer has closed its side, so a receiver that went away is noticed
//! before data is written into a dead connection. A failed connect or write, or a write that
//! takes longer than `write_timeout`, drops the connection and asks the driver to retry the
//! batch: the driver's backoff paces reconnects, and events wait in the queue, counted, until
//! the peer is back.
//!
//! `connections = N` (default 1) opens N connections and splits each batch over them by the
//! producer connection an event came from (its peer address; events without one use the first),
//! so one slow receiver connection does not cap the relay, and each producer's events still
//! travel one connection, in order. The lanes of a batch are written concurrently; a retry
//! rewrites only the lanes that failed.
//!
//! Guarantees: order per producer connection with the default `concurrency = 1` (batches go out
//! one at a time, in queue order). Delivery is at-least-once: a batch interrupted mid-write is
//! sent again on the next connection, so the receiver may see its first lines twice. Plain TCP
//! has no application acknowledgement: bytes a peer had received into its kernel buffer but not
//! read when it closed are lost with it, and the sink cannot know.

use std::fmt::Write as _;
use std::future::{Future, poll_fn};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Mutex;
use tracing::info;

use super::{Attempt, Sink};
use crate::config::HumanDuration;
use crate::config::error::{ConfigError, Locator};
use crate::event::{Attributes, Event};
use crate::ledger::AttemptOutcome;
use crate::queue::{BatchConfig, BatchLimits};
pub use crate::sources::framing::Framing;

pub mod defaults {
    use crate::config::{ByteSize, HumanDuration};
    use crate::queue::BatchConfig;

    pub fn connect_timeout() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub fn write_timeout() -> HumanDuration {
        HumanDuration::from_secs(10)
    }
    pub fn connections() -> usize {
        1
    }
    /// Sockets take what is there at once: a busy queue makes large batches by itself, and a
    /// quiet one gets low latency.
    pub fn batch() -> BatchConfig {
        BatchConfig {
            max_events: 1000,
            max_bytes: ByteSize::mib(1),
            timeout: HumanDuration::from_millis(0),
        }
    }
}

/// `[sinks.NAME] type = "tcp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSinkConfig {
    /// `host:port`; a name is resolved at each connect.
    pub address: String,
    #[serde(default)]
    pub framing: Framing,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: HumanDuration,
    #[serde(default = "defaults::write_timeout")]
    pub write_timeout: HumanDuration,
    #[serde(default = "defaults::batch")]
    pub batch: BatchConfig,
    /// Connections to the destination; events of one producer connection always use the same.
    #[serde(default = "defaults::connections")]
    pub connections: usize,
}

/// `[sinks.NAME] type = "unix"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixSinkConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub framing: Framing,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: HumanDuration,
    #[serde(default = "defaults::write_timeout")]
    pub write_timeout: HumanDuration,
    #[serde(default = "defaults::batch")]
    pub batch: BatchConfig,
    /// Connections to the destination; events of one producer connection always use the same.
    #[serde(default = "defaults::connections")]
    pub connections: usize,
}

/// The most connections one stream sink opens.
pub const MAX_CONNECTIONS: usize = 64;

fn validate_connections(connections: usize, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
    if (1..=MAX_CONNECTIONS).contains(&connections) {
        return Vec::new();
    }
    vec![locator.error(
        &format!("{prefix}.connections"),
        format!("expected 1 to {MAX_CONNECTIONS} connections, found {connections}"),
    )]
}

/// Checks of the keys every socket sink has.
pub fn validate_common(
    prefix: &str,
    locator: &Locator,
    timeouts: &[(&str, HumanDuration)],
    batch: &BatchConfig,
) -> Vec<ConfigError> {
    let mut errors = batch.validate(&format!("{prefix}.batch"), locator);
    for (key, value) in timeouts {
        if value.0.is_zero() {
            errors
                .push(locator.error(&format!("{prefix}.{key}"), "expected a duration above zero"));
        }
    }
    errors
}

/// Whether `address` looks like `host:port`.
pub fn valid_address(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

impl TcpSinkConfig {
    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = validate_common(
            prefix,
            locator,
            &[
                ("connect_timeout", self.connect_timeout),
                ("write_timeout", self.write_timeout),
            ],
            &self.batch,
        );
        if !valid_address(&self.address) {
            errors.push(locator.error(
                &format!("{prefix}.address"),
                format!("expected host:port, found {:?}", self.address),
            ));
        }
        errors.extend(validate_connections(self.connections, prefix, locator));
        errors
    }
}

impl UnixSinkConfig {
    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = validate_common(
            prefix,
            locator,
            &[
                ("connect_timeout", self.connect_timeout),
                ("write_timeout", self.write_timeout),
            ],
            &self.batch,
        );
        if self.path.as_os_str().is_empty() {
            errors.push(locator.error(
                &format!("{prefix}.path"),
                "expected a socket path, found an empty string",
            ));
        }
        errors.extend(validate_connections(self.connections, prefix, locator));
        errors
    }
}

/// Where a stream sink connects.
#[derive(Debug, Clone)]
enum Target {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(address) => write!(f, "tcp {address}"),
            Target::Unix(path) => write!(f, "unix {}", path.display()),
        }
    }
}

enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Target {
    async fn connect(&self) -> io::Result<Connection> {
        match self {
            Target::Tcp(address) => {
                let stream = TcpStream::connect(address.as_str()).await?;
                stream.set_nodelay(true)?;
                Ok(Connection::Tcp(stream))
            }
            Target::Unix(path) => Ok(Connection::Unix(UnixStream::connect(path).await?)),
        }
    }
}

impl Connection {
    /// Whether the peer has closed (or reset) its side. Receivers send nothing; bytes they do
    /// send are read and ignored.
    fn peer_closed(&self) -> bool {
        let mut scratch = [0u8; 64];
        loop {
            let read = match self {
                Connection::Tcp(s) => s.try_read(&mut scratch),
                Connection::Unix(s) => s.try_read(&mut scratch),
            };
            match read {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Connection::Tcp(s) => s.write_all(bytes).await,
            Connection::Unix(s) => s.write_all(bytes).await,
        }
    }
}

/// Appends one event's frame to `out`.
pub fn encode_frame(framing: Framing, payload: &[u8], out: &mut BytesMut) {
    match framing {
        Framing::Lines => {
            out.put_slice(payload);
            if payload.last() != Some(&b'\n') {
                out.put_u8(b'\n');
            }
        }
        Framing::OctetCounting => {
            // Writing into a BytesMut cannot fail.
            let _ = write!(out, "{} ", payload.len());
            out.put_slice(payload);
        }
    }
}

/// A `tcp` or `unix` sink.
pub struct StreamSink {
    target: Target,
    framing: Framing,
    connect_timeout: Duration,
    write_timeout: Duration,
    batch: BatchLimits,
    /// One slot per connection ("lane"); see [`StreamSink::lane_of`].
    lanes: Vec<Mutex<Option<Connection>>>,
}

/// One batch as the lanes will write it.
pub struct LaneBatch {
    bytes: Vec<Bytes>,
    /// Lanes already written by an earlier attempt: a retry skips them.
    written: Vec<AtomicBool>,
}

impl StreamSink {
    pub fn tcp(config: &TcpSinkConfig) -> Self {
        Self::new(
            Target::Tcp(config.address.clone()),
            config.framing,
            config.connect_timeout,
            config.write_timeout,
            &config.batch,
            config.connections,
        )
    }

    pub fn unix(config: &UnixSinkConfig) -> Self {
        Self::new(
            Target::Unix(config.path.clone()),
            config.framing,
            config.connect_timeout,
            config.write_timeout,
            &config.batch,
            config.connections,
        )
    }

    fn new(
        target: Target,
        framing: Framing,
        connect_timeout: HumanDuration,
        write_timeout: HumanDuration,
        batch: &BatchConfig,
        connections: usize,
    ) -> Self {
        Self {
            target,
            framing,
            connect_timeout: connect_timeout.0,
            write_timeout: write_timeout.0,
            batch: batch.limits(),
            lanes: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// The connection an event goes out on: always the same one for events from one producer
    /// connection (its peer address), so each producer's order holds; lane 0 for events without
    /// a peer address.
    fn lane_of(&self, event: &Event) -> usize {
        match (&event.attributes, self.lanes.len()) {
            (_, 1) => 0,
            (Attributes::Peer(peer), lanes) => {
                let mut hasher = DefaultHasher::new();
                peer.hash(&mut hasher);
                (hasher.finish() % lanes as u64) as usize
            }
            _ => 0,
        }
    }

    /// Writes `bytes` on lane `lane`, connecting first if needed.
    async fn write_lane(&self, lane: usize, bytes: &[u8]) -> Result<(), Attempt> {
        let mut slot = self.lanes[lane].lock().await;
        if slot.as_ref().is_some_and(Connection::peer_closed) {
            info!(target = %self.target, lane, "The peer closed the connection; reconnecting.");
            *slot = None;
        }
        let connection = match slot.as_mut() {
            Some(connection) => connection,
            None => match tokio::time::timeout(self.connect_timeout, self.target.connect()).await {
                Ok(Ok(connection)) => {
                    info!(target = %self.target, lane, "Connected.");
                    slot.insert(connection)
                }
                Ok(Err(error)) => {
                    return Err(retry(
                        AttemptOutcome::ConnectionError,
                        format!("cannot connect to {}: {error}", self.target),
                    ));
                }
                Err(_) => {
                    return Err(retry(
                        AttemptOutcome::Timeout,
                        format!(
                            "no connection to {} within {:?}",
                            self.target, self.connect_timeout
                        ),
                    ));
                }
            },
        };
        match tokio::time::timeout(self.write_timeout, connection.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                *slot = None;
                Err(retry(
                    AttemptOutcome::ConnectionError,
                    format!("cannot write to {}: {error}", self.target),
                ))
            }
            Err(_) => {
                *slot = None;
                Err(retry(
                    AttemptOutcome::Timeout,
                    format!(
                        "write to {} took over {:?}",
                        self.target, self.write_timeout
                    ),
                ))
            }
        }
    }
}

fn retry(outcome: AttemptOutcome, detail: String) -> Attempt {
    Attempt::Retry {
        outcome,
        after: None,
        detail,
    }
}

/// Runs `futures` concurrently and returns their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

impl Sink for StreamSink {
    type Request = LaneBatch;

    fn batch_limits(&self) -> BatchLimits {
        self.batch
    }

    fn encode(&self, events: &[Arc<Event>]) -> LaneBatch {
        let lanes = self.lanes.len();
        let size: usize = events.iter().map(|e| e.payload.len() + 11).sum();
        let mut out: Vec<BytesMut> = (0..lanes)
            .map(|_| BytesMut::with_capacity(size / lanes + 64))
            .collect();
        for event in events {
            encode_frame(self.framing, &event.payload, &mut out[self.lane_of(event)]);
        }
        LaneBatch {
            bytes: out.into_iter().map(BytesMut::freeze).collect(),
            written: (0..lanes).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    async fn send(&self, request: &LaneBatch, _events: &[Arc<Event>]) -> Attempt {
        let pending: Vec<usize> = (0..self.lanes.len())
            .filter(|&lane| {
                !request.bytes[lane].is_empty() && !request.written[lane].load(Ordering::Relaxed)
            })
            .collect();
        let results = join_all(
            pending
                .iter()
                .map(|&lane| self.write_lane(lane, &request.bytes[lane]))
                .collect(),
        )
        .await;
        let mut failed = None;
        for (lane, result) in pending.into_iter().zip(results) {
            match result {
                Ok(()) => request.written[lane].store(true, Ordering::Relaxed),
                Err(attempt) => failed = failed.or(Some(attempt)),
            }
        }
        failed.unwrap_or(Attempt::Delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_lines_or_octet_counted() {
        let mut out = BytesMut::new();
        encode_frame(Framing::Lines, b"a", &mut out);
        encode_frame(Framing::Lines, b"b\n", &mut out);
        encode_frame(Framing::OctetCounting, b"hello", &mut out);
        assert_eq!(&out[..], b"a\nb\n5 hello");
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert!(valid_address("127.0.0.1:514"));
        assert!(valid_address("siem.example.com:6514"));
        assert!(valid_address("[::1]:514"));
        assert!(!valid_address("localhost"));
        assert!(!valid_address(":514"));
        assert!(!valid_address("host:0"));
    }
}
