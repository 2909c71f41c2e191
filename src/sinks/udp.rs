//! The `udp` sink: one event per datagram.
//!
//! Wire format: each datagram is one event's frame as the stream sinks write it
//! ([`super::socket::encode_frame`]): the payload and an LF (`lines`, the default), or
//! `LEN SP payload` (`octet_counting`). A frame longer than `max_datagram_bytes` (default and
//! most 65,507, the IPv4 limit) cannot be sent: it is left out of the batch and counted
//! `frame_too_large`, and the rest of the batch goes.
//!
//! The socket is connected to `address` on first use, so the kernel reports an unreachable port
//! (ICMP) as an error on a later send; an error drops the socket and the driver retries the
//! batch with backoff. UDP gives no delivery guarantee: a datagram the network or the receiver's
//! buffer drops is gone, and a retried batch sends its first datagrams again.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

use super::socket::{Framing, defaults, encode_frame, valid_address, validate_common};
use super::{Attempt, Sink};
use crate::config::error::{ConfigError, Locator};
use crate::config::{ByteSize, HumanDuration};
use crate::event::Event;
use crate::ledger::{AttemptOutcome, DropReason};
use crate::queue::{BatchConfig, BatchLimits};

/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: u64 = 65_507;

fn default_max_datagram_bytes() -> ByteSize {
    ByteSize(MAX_DATAGRAM)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpSinkConfig {
    /// `host:port`; a name is resolved when the socket is (re)created.
    pub address: String,
    #[serde(default)]
    pub framing: Framing,
    #[serde(default = "default_max_datagram_bytes")]
    pub max_datagram_bytes: ByteSize,
    /// The longest one batch's datagrams may take to send.
    #[serde(default = "defaults::write_timeout")]
    pub write_timeout: HumanDuration,
    #[serde(default = "defaults::batch")]
    pub batch: BatchConfig,
}

impl UdpSinkConfig {
    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = validate_common(
            prefix,
            locator,
            &[("write_timeout", self.write_timeout)],
            &self.batch,
        );
        if !valid_address(&self.address) {
            errors.push(locator.error(
                &format!("{prefix}.address"),
                format!("expected host:port, found {:?}", self.address),
            ));
        }
        if !(1..=MAX_DATAGRAM).contains(&self.max_datagram_bytes.0) {
            errors.push(locator.error(
                &format!("{prefix}.max_datagram_bytes"),
                format!(
                    "expected 1 to {MAX_DATAGRAM} bytes, found {}",
                    self.max_datagram_bytes.0
                ),
            ));
        }
        errors
    }
}

/// One batch: the datagrams to send and how many events could not become one.
pub struct Datagrams {
    datagrams: Vec<Bytes>,
    left_out: [(DropReason, u64); 1],
}

pub struct UdpSink {
    address: String,
    framing: Framing,
    max_datagram: usize,
    write_timeout: Duration,
    batch: BatchLimits,
    socket: Mutex<Option<UdpSocket>>,
}

impl UdpSink {
    pub fn new(config: &UdpSinkConfig) -> Self {
        Self {
            address: config.address.clone(),
            framing: config.framing,
            max_datagram: config.max_datagram_bytes.as_usize(),
            write_timeout: config.write_timeout.0,
            batch: config.batch.limits(),
            socket: Mutex::new(None),
        }
    }

    async fn connect(&self) -> io::Result<UdpSocket> {
        let target = tokio::net::lookup_host(self.address.as_str())
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let local: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(target).await?;
        Ok(socket)
    }

    async fn send_all(&self, datagrams: &[Bytes]) -> io::Result<()> {
        let mut slot = self.socket.lock().await;
        let socket = match slot.as_mut() {
            Some(socket) => socket,
            None => slot.insert(self.connect().await?),
        };
        for datagram in datagrams {
            if let Err(error) = socket.send(datagram).await {
                *slot = None;
                return Err(error);
            }
        }
        Ok(())
    }
}

impl Sink for UdpSink {
    type Request = Datagrams;

    fn batch_limits(&self) -> BatchLimits {
        self.batch
    }

    fn encode(&self, events: &[Arc<Event>]) -> Datagrams {
        let mut datagrams = Vec::with_capacity(events.len());
        let mut too_large = 0;
        // One allocation for the batch; each datagram is a slice of it.
        let size: usize = events.iter().map(|e| e.payload.len() + 11).sum();
        let mut out = BytesMut::with_capacity(size);
        for event in events {
            encode_frame(self.framing, &event.payload, &mut out);
            let frame = out.split();
            if frame.len() > self.max_datagram {
                too_large += 1;
            } else {
                datagrams.push(frame.freeze());
            }
        }
        Datagrams {
            datagrams,
            left_out: [(DropReason::FrameTooLarge, too_large)],
        }
    }

    fn left_out<'r>(&self, request: &'r Datagrams) -> &'r [(DropReason, u64)] {
        &request.left_out
    }

    async fn send(&self, request: &Datagrams, _events: &[Arc<Event>]) -> Attempt {
        match tokio::time::timeout(self.write_timeout, self.send_all(&request.datagrams)).await {
            Ok(Ok(())) => Attempt::Delivered,
            Ok(Err(error)) => Attempt::Retry {
                outcome: AttemptOutcome::ConnectionError,
                after: None,
                detail: format!("cannot send to udp {}: {error}", self.address),
            },
            Err(_) => Attempt::Retry {
                outcome: AttemptOutcome::Timeout,
                after: None,
                detail: format!(
                    "sending to udp {} took over {:?}",
                    self.address, self.write_timeout
                ),
            },
        }
    }
}
