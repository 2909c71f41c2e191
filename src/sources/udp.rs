//! The `udp` source: one datagram is one event (Vault's socket audit device over UDP, syslog
//! shippers).
//!
//! Wire format: the datagram's bytes are the payload; one trailing LF (or CRLF) is removed, and
//! then `strip_prefix` if it is there. An empty datagram is no event. A datagram longer than
//! `max_frame_bytes` is counted `frame_too_large` (the receive buffer always holds a whole
//! datagram, so nothing is ever truncated into a wrong event). Nothing inside the payload is
//! looked at: binary bytes are fine.
//!
//! UDP has no flow control: while a `block` queue is full the source stops reading, and what
//! overflows the kernel's receive buffer is lost there, uncounted by the relay (the kernel
//! counts it: `RcvbufErrors` in `/proc/net/snmp`).
//!
//! ```toml
//! [sources.vault_udp]
//! type = "udp"
//! listen = "127.0.0.1:9091"
//! max_frame_bytes = "64KiB"
//! strip_prefix = "vault:"
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{info, warn};

use super::framing::{datagram_payload, strip_prefix};
use super::stream::defaults;
use super::{RunningSource, SourceContext};
use crate::config::ByteSize;
use crate::config::error::{ConfigError, Locator};
use crate::event::{Attributes, Event};
use crate::ledger::DropReason;
use crate::log_throttle::Throttle;

/// Room for the largest possible datagram (65,507 bytes of IPv4 payload) and one byte more.
const DATAGRAM_ROOM: usize = 64 * 1024 + 1;
/// A receive buffer is reused for this many bytes of datagrams before a new one is allocated.
const BUFFER_BYTES: usize = 1024 * 1024;
/// How far a push may wait for queue room; shutdown cuts it short.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpSourceConfig {
    pub listen: SocketAddr,
    #[serde(default = "defaults::max_frame_bytes")]
    pub max_frame_bytes: ByteSize,
    #[serde(default)]
    pub strip_prefix: Option<String>,
}

impl UdpSourceConfig {
    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.max_frame_bytes.0 == 0 {
            errors.push(locator.error(
                &format!("{prefix}.max_frame_bytes"),
                "expected at least 1 byte, found 0",
            ));
        }
        if self.strip_prefix.as_deref() == Some("") {
            errors.push(locator.error(
                &format!("{prefix}.strip_prefix"),
                "expected a prefix, found an empty string",
            ));
        }
        errors
    }
}

pub async fn start(
    config: UdpSourceConfig,
    context: SourceContext,
) -> anyhow::Result<RunningSource> {
    let socket = UdpSocket::bind(config.listen).await.with_context(|| {
        format!(
            "sources.{}: cannot listen on udp {}",
            context.name, config.listen
        )
    })?;
    let local_addr = socket.local_addr()?;
    info!(source = %context.name, address = %local_addr, "UDP source listening.");
    let task = tokio::spawn(serve(socket, config, context));
    Ok(RunningSource {
        local_addr: Some(local_addr),
        task,
    })
}

async fn serve(socket: UdpSocket, config: UdpSourceConfig, context: SourceContext) {
    let prefix = Bytes::from(config.strip_prefix.clone().unwrap_or_default());
    let max = config.max_frame_bytes.as_usize();
    let ledger = context.ledger.clone();
    let errors = Throttle::default();
    let mut buf = BytesMut::with_capacity(BUFFER_BYTES);
    loop {
        if buf.capacity() - buf.len() < DATAGRAM_ROOM {
            buf = BytesMut::with_capacity(BUFFER_BYTES.max(DATAGRAM_ROOM));
        }
        let received = tokio::select! {
            _ = context.shutdown.cancelled() => break,
            received = socket.recv_buf_from(&mut buf) => received,
        };
        let peer = match received {
            Ok((_, peer)) => peer,
            Err(error) => {
                if let Some(suppressed) = errors.check() {
                    warn!(source = %context.name, %error, suppressed, "Cannot receive a datagram.");
                }
                buf.clear();
                continue;
            }
        };
        let datagram = buf.split().freeze();
        if datagram.len() > max {
            ledger.received.inc();
            ledger.dropped(DropReason::FrameTooLarge, 1);
            continue;
        }
        let payload = strip_prefix(datagram_payload(datagram), &prefix);
        if payload.is_empty() {
            continue;
        }
        let event = Arc::new(Event::new(
            context.ids.next(),
            context.name.clone(),
            payload,
            Attributes::Peer(peer),
        ));
        ledger.received.inc();
        ledger.in_flight.inc();
        let push = context.fanout.push(event, Instant::now() + FAR);
        tokio::pin!(push);
        let result = tokio::select! {
            result = &mut push => Some(result),
            _ = context.shutdown.cancelled() => tokio::time::timeout(context.grace, push).await.ok(),
        };
        match result {
            Some(Ok(())) => {
                ledger.delivered.inc();
            }
            Some(Err(reason)) => ledger.dropped(reason, 1),
            None => ledger.dropped(DropReason::ShuttingDown, 1),
        }
        ledger.in_flight.dec();
    }
}
