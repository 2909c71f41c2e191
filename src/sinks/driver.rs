//! The delivery driver every sink shares: takes batches from the sink's queue and delivers them
//! with an in-flight limit, a rate limit and retries, keeping the sink's ledger.
//!
//! Each batch holds one of `concurrency` slots from the moment it leaves the queue until it is
//! delivered, rejected or given up on — retries and their backoff included — so a destination
//! that is down fills the slots and the backlog waits, bounded, in the queue where it is visible.
//! The driver ends when the queue is closed and drained and every slot is free again.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::StatusCode;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::warn;

use super::{Attempt, RetryConfig, Sink};
use crate::config::error::{ConfigError, Locator};
use crate::event::Reply;
use crate::ledger::{ComponentLedger, DropReason};
use crate::log_throttle::Throttle;
use crate::queue::{Batch, SinkQueue};

/// The delivery keys every sink takes: `concurrency`, `rate_limit`, `retry`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct DeliveryConfig {
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Deliveries (requests) per second, 0 = unlimited.
    pub rate_limit: u32,
    pub retry: RetryConfig,
}

impl DeliveryConfig {
    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if !(1..=4096).contains(&self.concurrency) {
            errors.push(locator.error(
                &format!("{prefix}.concurrency"),
                format!(
                    "expected 1 to 4096 deliveries in flight, found {}",
                    self.concurrency
                ),
            ));
        }
        if self.retry.initial_backoff.0.is_zero()
            || self.retry.initial_backoff > self.retry.max_backoff
        {
            errors.push(locator.error(
                &format!("{prefix}.retry.initial_backoff"),
                "expected a backoff above zero and no longer than retry.max_backoff",
            ));
        }
        errors
    }
}

/// Starts delivering `queue` into `sink`; the task ends once the queue is closed and drained.
pub fn spawn<S: Sink>(
    sink: S,
    queue: Arc<SinkQueue>,
    config: DeliveryConfig,
    ledger: Arc<ComponentLedger>,
) -> JoinHandle<()> {
    let limiter = NonZeroU32::new(config.rate_limit)
        .map(|rate| Arc::new(RateLimiter::direct(Quota::per_second(rate))));
    let shared = Arc::new(Shared {
        sink,
        queue,
        retry: config.retry,
        limiter,
        ledger,
        warn_throttle: Throttle::default(),
    });
    tokio::spawn(run(shared, config.concurrency))
}

struct Shared<S: Sink> {
    sink: S,
    queue: Arc<SinkQueue>,
    retry: RetryConfig,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    ledger: Arc<ComponentLedger>,
    warn_throttle: Throttle,
}

async fn run<S: Sink>(shared: Arc<Shared<S>>, concurrency: usize) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let limits = shared.sink.batch_limits();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let batch = shared.queue.next_batch(limits).await;
        if batch.is_empty() {
            break;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            deliver(&shared, batch).await;
            drop(slot);
        });
    }
    // Every slot back means every delivery has finished.
    let _ = slots.acquire_many(concurrency as u32).await;
}

async fn deliver<S: Sink>(shared: &Shared<S>, batch: Batch) {
    let mut events = batch.events.len() as u64;
    let request = shared.sink.encode(&batch.events);
    for &(reason, left_out) in shared.sink.left_out(&request) {
        let left_out = left_out.min(events);
        shared.ledger.dropped(reason, left_out);
        shared.ledger.in_flight.dec_by(left_out as i64);
        events -= left_out;
    }
    if events == 0 {
        for event in &batch.events {
            event.finished(false);
        }
        shared.queue.finish(&batch);
        return;
    }
    let mut attempt = 0u32;
    loop {
        if let Some(limiter) = &shared.limiter {
            limiter.until_ready().await;
        }
        attempt += 1;
        let started = Instant::now();
        // A closing disk queue keeps the batch (unacknowledged) for the next start: stop here.
        let result = tokio::select! {
            result = shared.sink.send(&request, &batch.events) => result,
            () = shared.queue.abandoned() => return,
        };
        shared
            .ledger
            .attempt(result.outcome(), started.elapsed().as_secs_f64());
        match result {
            Attempt::Delivered => {
                settle(shared, &batch, events, None);
                return;
            }
            Attempt::Rejected { detail } => {
                if let Some(suppressed) = shared.warn_throttle.check() {
                    warn!(sink = %shared.ledger.name, events, suppressed, %detail, "Destination rejected a batch; dropping it.");
                }
                settle(shared, &batch, events, Some(DropReason::Rejected));
                return;
            }
            Attempt::Retry { after, detail, .. } => {
                if shared.retry.exhausted(attempt) {
                    if let Some(suppressed) = shared.warn_throttle.check() {
                        warn!(sink = %shared.ledger.name, events, attempt, suppressed, %detail, "Giving up on a batch after its last attempt.");
                    }
                    for event in &batch.events {
                        event.send_reply(Reply::status(StatusCode::BAD_GATEWAY));
                    }
                    settle(shared, &batch, events, Some(DropReason::RetriesExhausted));
                    return;
                }
                let delay = shared.retry.delay(attempt, after);
                if let Some(suppressed) = shared.warn_throttle.check() {
                    warn!(sink = %shared.ledger.name, events, attempt, ?delay, suppressed, %detail, "Delivery failed; retrying.");
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shared.queue.abandoned() => return,
                }
            }
        }
    }
}

/// Records a batch's end in the ledger (delivered, or dropped for `reason`) and releases it.
fn settle<S: Sink>(shared: &Shared<S>, batch: &Batch, events: u64, dropped: Option<DropReason>) {
    match dropped {
        None => {
            shared.ledger.delivered.inc_by(events);
        }
        Some(reason) => shared.ledger.dropped(reason, events),
    }
    shared.ledger.in_flight.dec_by(events as i64);
    for event in &batch.events {
        event.finished(dropped.is_none());
    }
    shared.queue.finish(batch);
}
