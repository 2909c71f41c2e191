//! Sinks: what drains a queue into a destination.
//!
//! A sink kind implements [`Sink`]: how to turn a batch into one request ([`Sink::encode`],
//! once per batch) and how to send it and classify the answer ([`Sink::send`], once per
//! attempt). Everything else — batching, the in-flight limit, the rate limit, retries with
//! backoff and jitter, the ledger — is the shared [`driver`], the same for every kind. Adding a
//! kind is one file and a line in each `match` of [`SinkSettings`].

pub mod blackhole;
pub mod driver;
pub mod file;
pub mod http;
pub mod http_client;
pub mod http_forward;
pub mod retry;
pub mod socket;
pub mod stdout;
pub mod udp;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use toml::Table;

use crate::config::error::{ConfigError, Locator};
use crate::config::typed::{deserialize, struct_fields};
use crate::event::Event;
use crate::ledger::{AttemptOutcome, DropReason};
use crate::queue::BatchLimits;
pub use driver::DeliveryConfig;
pub use retry::RetryConfig;

/// One destination's encoding and answer classification.
pub trait Sink: Send + Sync + 'static {
    /// What one delivery sends, built once per batch and reused by every retry.
    type Request: Send + Sync + 'static;

    fn batch_limits(&self) -> BatchLimits;

    fn encode(&self, events: &[Arc<Event>]) -> Self::Request;

    /// Events `encode` left out of `request` because they can never be sent (a UDP event over
    /// the datagram limit), by reason. The driver counts them dropped at once and settles the
    /// rest of the batch by the request's outcome. Most sinks send every event: none.
    fn left_out<'r>(&self, _request: &'r Self::Request) -> &'r [(DropReason, u64)] {
        &[]
    }

    /// Sends once; never retries by itself.
    fn send(
        &self,
        request: &Self::Request,
        events: &[Arc<Event>],
    ) -> impl Future<Output = Attempt> + Send;
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempt {
    Delivered,
    /// Worth trying again, after at least `after` when the destination said so.
    Retry {
        outcome: AttemptOutcome,
        after: Option<Duration>,
        detail: String,
    },
    /// Refused for good; trying again would not help.
    Rejected {
        detail: String,
    },
}

impl Attempt {
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            Attempt::Delivered => AttemptOutcome::Delivered,
            Attempt::Retry { outcome, .. } => *outcome,
            Attempt::Rejected { .. } => AttemptOutcome::Rejected,
        }
    }
}

/// The kind-specific part of a sink's config.
#[derive(Debug, Clone)]
pub enum SinkSettings {
    HttpForward(http_forward::HttpForwardConfig),
    Http(http::HttpConfig),
    Stdout(stdout::StdoutConfig),
    Blackhole(blackhole::BlackholeConfig),
    Tcp(socket::TcpSinkConfig),
    Udp(udp::UdpSinkConfig),
    Unix(socket::UnixSinkConfig),
    File(file::FileSinkConfig),
}

impl SinkSettings {
    pub const KINDS: &'static [&'static str] = &[
        "http_forward",
        "http",
        "stdout",
        "blackhole",
        "tcp",
        "udp",
        "unix",
        "file",
    ];

    /// The keys a kind takes besides the common ones.
    pub fn fields(kind: &str) -> &'static [&'static str] {
        match kind {
            "http_forward" => struct_fields::<http_forward::HttpForwardConfig>(),
            "http" => struct_fields::<http::HttpConfig>(),
            "stdout" => struct_fields::<stdout::StdoutConfig>(),
            "blackhole" => struct_fields::<blackhole::BlackholeConfig>(),
            "tcp" => struct_fields::<socket::TcpSinkConfig>(),
            "udp" => struct_fields::<udp::UdpSinkConfig>(),
            "unix" => struct_fields::<socket::UnixSinkConfig>(),
            "file" => struct_fields::<file::FileSinkConfig>(),
            _ => &[],
        }
    }

    pub fn parse(
        kind: &str,
        table: Table,
        prefix: &str,
        locator: &Locator,
    ) -> Result<Self, Vec<ConfigError>> {
        let one = |e| vec![e];
        match kind {
            "http_forward" => deserialize(table, prefix, locator)
                .map(Self::HttpForward)
                .map_err(one),
            "http" => deserialize(table, prefix, locator)
                .map(Self::Http)
                .map_err(one),
            "stdout" => deserialize(table, prefix, locator)
                .map(Self::Stdout)
                .map_err(one),
            "blackhole" => deserialize(table, prefix, locator)
                .map(Self::Blackhole)
                .map_err(one),
            "tcp" => deserialize(table, prefix, locator)
                .map(Self::Tcp)
                .map_err(one),
            "udp" => deserialize(table, prefix, locator)
                .map(Self::Udp)
                .map_err(one),
            "unix" => deserialize(table, prefix, locator)
                .map(Self::Unix)
                .map_err(one),
            "file" => deserialize(table, prefix, locator)
                .map(Self::File)
                .map_err(one),
            other => Err(vec![locator.error(
                &format!("{prefix}.type"),
                format!("unknown sink type {other:?}"),
            )]),
        }
    }

    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        match self {
            Self::HttpForward(c) => c.validate(prefix, locator),
            Self::Http(c) => c.validate(prefix, locator),
            Self::Stdout(c) => c.batch.validate(&format!("{prefix}.batch"), locator),
            Self::Blackhole(c) => c.batch.validate(&format!("{prefix}.batch"), locator),
            Self::Tcp(c) => c.validate(prefix, locator),
            Self::Udp(c) => c.validate(prefix, locator),
            Self::Unix(c) => c.validate(prefix, locator),
            Self::File(c) => c.validate(prefix, locator),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::HttpForward(_) => "http_forward",
            Self::Http(_) => "http",
            Self::Stdout(_) => "stdout",
            Self::Blackhole(_) => "blackhole",
            Self::Tcp(_) => "tcp",
            Self::Udp(_) => "udp",
            Self::Unix(_) => "unix",
            Self::File(_) => "file",
        }
    }

    /// Requests in flight when the config does not say.
    pub fn default_concurrency(&self) -> usize {
        match self {
            Self::HttpForward(_) => 64,
            Self::Http(_) => 4,
            Self::Stdout(_) | Self::Blackhole(_) => 1,
            // One connection (or file), batches in queue order.
            Self::Tcp(_) | Self::Udp(_) | Self::Unix(_) | Self::File(_) => 1,
        }
    }
}
