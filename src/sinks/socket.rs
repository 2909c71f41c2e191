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
//! Guarantees: order per connection with the default `concurrency = 1` (batches go out one at
//! a time, in queue order). Delivery is at-least-once: a batch interrupted mid-write is sent
//! again whole on the next connection, so the receiver may see its first lines twice. Plain TCP
//! has no application acknowledgement: bytes a peer had received into its kernel buffer but not
//! read when it closed are lost with it, and the sink cannot know.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
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
use crate::event::Event;
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
    connection: Mutex<Option<Connection>>,
}

impl StreamSink {
    pub fn tcp(config: &TcpSinkConfig) -> Self {
        Self::new(
            Target::Tcp(config.address.clone()),
            config.framing,
            config.connect_timeout,
            config.write_timeout,
            &config.batch,
        )
    }

    pub fn unix(config: &UnixSinkConfig) -> Self {
        Self::new(
            Target::Unix(config.path.clone()),
            config.framing,
            config.connect_timeout,
            config.write_timeout,
            &config.batch,
        )
    }

    fn new(
        target: Target,
        framing: Framing,
        connect_timeout: HumanDuration,
        write_timeout: HumanDuration,
        batch: &BatchConfig,
    ) -> Self {
        Self {
            target,
            framing,
            connect_timeout: connect_timeout.0,
            write_timeout: write_timeout.0,
            batch: batch.limits(),
            connection: Mutex::new(None),
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

impl Sink for StreamSink {
    type Request = Bytes;

    fn batch_limits(&self) -> BatchLimits {
        self.batch
    }

    fn encode(&self, events: &[Arc<Event>]) -> Bytes {
        let size: usize = events.iter().map(|e| e.payload.len() + 11).sum();
        let mut out = BytesMut::with_capacity(size);
        for event in events {
            encode_frame(self.framing, &event.payload, &mut out);
        }
        out.freeze()
    }

    async fn send(&self, request: &Bytes, _events: &[Arc<Event>]) -> Attempt {
        let mut slot = self.connection.lock().await;
        if slot.as_ref().is_some_and(Connection::peer_closed) {
            info!(target = %self.target, "The peer closed the connection; reconnecting.");
            *slot = None;
        }
        let connection = match slot.as_mut() {
            Some(connection) => connection,
            None => match tokio::time::timeout(self.connect_timeout, self.target.connect()).await {
                Ok(Ok(connection)) => {
                    info!(target = %self.target, "Connected.");
                    slot.insert(connection)
                }
                Ok(Err(error)) => {
                    return retry(
                        AttemptOutcome::ConnectionError,
                        format!("cannot connect to {}: {error}", self.target),
                    );
                }
                Err(_) => {
                    return retry(
                        AttemptOutcome::Timeout,
                        format!(
                            "no connection to {} within {:?}",
                            self.target, self.connect_timeout
                        ),
                    );
                }
            },
        };
        match tokio::time::timeout(self.write_timeout, connection.write_all(request)).await {
            Ok(Ok(())) => Attempt::Delivered,
            Ok(Err(error)) => {
                *slot = None;
                retry(
                    AttemptOutcome::ConnectionError,
                    format!("cannot write to {}: {error}", self.target),
                )
            }
            Err(_) => {
                *slot = None;
                retry(
                    AttemptOutcome::Timeout,
                    format!(
                        "write to {} took over {:?}",
                        self.target, self.write_timeout
                    ),
                )
            }
        }
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
