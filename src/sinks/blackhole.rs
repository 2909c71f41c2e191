//! `blackhole`: takes every event and discards it, counting it as delivered. For benchmarks and
//! for trying a source alone.

use std::sync::Arc;

use serde::Deserialize;

use super::{Attempt, Sink};
use crate::event::Event;
use crate::queue::{BatchConfig, BatchLimits};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {
    #[serde(default)]
    pub batch: BatchConfig,
}

pub struct Blackhole {
    batch: BatchLimits,
}

impl Blackhole {
    pub fn new(config: &BlackholeConfig) -> Self {
        Self {
            batch: config.batch.limits(),
        }
    }
}

impl Sink for Blackhole {
    type Request = ();

    fn batch_limits(&self) -> BatchLimits {
        self.batch
    }

    fn encode(&self, _events: &[Arc<Event>]) {}

    async fn send(&self, _request: &(), _events: &[Arc<Event>]) -> Attempt {
        Attempt::Delivered
    }
}
