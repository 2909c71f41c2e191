//! The `tcp` source: a TCP listener whose connections carry frames — newline-delimited lines by
//! default (Vault's socket audit device, line shippers) or RFC 6587 octet counting (syslog).
//!
//! The wire formats are described in [`super::framing`]; the read loop, limits and ledger in
//! [`super::stream`]. Each event carries the peer's address.
//!
//! ```toml
//! [sources.vault]
//! type = "tcp"
//! listen = "127.0.0.1:9090"
//! framing = "lines"             # or "octet_counting"
//! max_frame_bytes = "1MiB"      # longer frames are dropped (frame_too_large)
//! strip_prefix = "vault:"       # removed from the start of each line
//! max_connections = 10000
//! idle_timeout = "1h"           # unset: quiet connections stay open
//! partial_frame_timeout = "60s"
//! ```

use std::io;
use std::net::SocketAddr;

use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tracing::info;

use super::framing::Framing;
use super::stream::{self, Peer, StreamListener, StreamOptions, defaults};
use super::{AckPoint, RunningSource, SourceContext};
use crate::config::error::{ConfigError, Locator};
use crate::config::{ByteSize, HumanDuration};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSourceConfig {
    pub listen: SocketAddr,
    #[serde(default)]
    pub framing: Framing,
    #[serde(default = "defaults::max_frame_bytes")]
    pub max_frame_bytes: ByteSize,
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default)]
    pub idle_timeout: Option<HumanDuration>,
    #[serde(default = "defaults::partial_frame_timeout")]
    pub partial_frame_timeout: HumanDuration,
    /// `durable`: read nothing more until what the last read held is synced to the disk
    /// queues (the default when a sink's queue is on disk); `received`: don't wait.
    #[serde(default)]
    pub ack: Option<AckPoint>,
}

impl TcpSourceConfig {
    pub fn options(&self) -> StreamOptions {
        StreamOptions {
            framing: self.framing,
            max_frame_bytes: self.max_frame_bytes,
            strip_prefix: self.strip_prefix.clone(),
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            partial_frame_timeout: self.partial_frame_timeout,
            ack: self.ack,
        }
    }

    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        self.options().validate(prefix, locator)
    }
}

impl StreamListener for TcpListener {
    type Stream = TcpStream;

    async fn accept(&self) -> io::Result<(TcpStream, Peer)> {
        let (stream, addr) = TcpListener::accept(self).await?;
        Ok((
            stream,
            Peer {
                label: addr.to_string(),
                addr: Some(addr),
            },
        ))
    }
}

pub async fn start(
    config: TcpSourceConfig,
    context: SourceContext,
) -> anyhow::Result<RunningSource> {
    let (listener, local_addr) = super::bind_tcp(&context.name, config.listen).await?;
    info!(source = %context.name, address = %local_addr, framing = ?config.framing, "TCP source listening.");
    let task = tokio::spawn(stream::serve(listener, config.options(), context));
    Ok(RunningSource {
        local_addr: Some(local_addr),
        task,
    })
}
