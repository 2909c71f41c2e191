//! `stdout`: writes each event's payload as a line to standard output, for trying things.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::http::{Encoding, encode_body};
use super::{Attempt, Sink};
use crate::event::Event;
use crate::ledger::AttemptOutcome;
use crate::queue::{BatchConfig, BatchLimits};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    #[serde(default)]
    pub batch: BatchConfig,
}

pub struct Stdout {
    batch: BatchLimits,
}

impl Stdout {
    pub fn new(config: &StdoutConfig) -> Self {
        Self {
            batch: config.batch.limits(),
        }
    }
}

impl Sink for Stdout {
    type Request = Bytes;

    fn batch_limits(&self) -> BatchLimits {
        self.batch
    }

    fn encode(&self, events: &[Arc<Event>]) -> Bytes {
        encode_body(Encoding::Ndjson, events)
    }

    async fn send(&self, lines: &Bytes, _events: &[Arc<Event>]) -> Attempt {
        let mut out = tokio::io::stdout();
        match out.write_all(lines).await.and(out.flush().await) {
            Ok(()) => Attempt::Delivered,
            Err(error) => Attempt::Retry {
                outcome: AttemptOutcome::ConnectionError,
                after: None,
                detail: format!("cannot write to stdout: {error}"),
            },
        }
    }
}
