//! The memory queue: a `VecDeque` behind a mutex, bounded by events and bytes.
//!
//! Invariants:
//! - `queued_events`/`queued_bytes` in the sink's ledger always equal the deque's length and
//!   byte total (both change under the lock).
//! - An event larger than `max_bytes` is still taken when the queue is empty, so one large
//!   event can never wedge a `block` queue forever.
//! - One consumer (the sink's driver). It is woken when the batch it waits for is full, not on
//!   every push, so a busy queue costs one wake-up per batch.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::{Instant, timeout_at};

use super::{BatchLimits, Offer, PushError, WhenFull};
use crate::event::Event;
use crate::ledger::{ComponentLedger, DropReason};

pub struct MemoryQueue {
    state: Mutex<State>,
    /// The consumer waits here for a batch.
    readable: Notify,
    /// Producers of a `block` queue wait here for room.
    writable: Notify,
    max_events: usize,
    max_bytes: usize,
    when_full: WhenFull,
    ledger: Arc<ComponentLedger>,
}

struct State {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    closed: bool,
    /// Wake the consumer once this many events (or `wake_at_bytes` bytes) are queued.
    wake_at_events: usize,
    wake_at_bytes: usize,
}

impl State {
    fn fits(&self, size: usize, max_events: usize, max_bytes: usize) -> bool {
        self.events.is_empty() || (self.events.len() < max_events && self.bytes + size <= max_bytes)
    }
}

impl MemoryQueue {
    pub fn new(
        max_events: usize,
        max_bytes: usize,
        when_full: WhenFull,
        ledger: Arc<ComponentLedger>,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                events: VecDeque::new(),
                bytes: 0,
                closed: false,
                wake_at_events: 1,
                wake_at_bytes: usize::MAX,
            }),
            readable: Notify::new(),
            writable: Notify::new(),
            max_events,
            max_bytes,
            when_full,
            ledger,
        }
    }

    /// Offers one event. Counts it as received, and as dropped when it is refused.
    pub async fn push(&self, event: Arc<Event>, deadline: Instant) -> Result<(), PushError> {
        let offer = Offer::new(&self.ledger);
        let result = self.offer(event, deadline).await;
        offer.settle();
        result
    }

    async fn offer(&self, event: Arc<Event>, deadline: Instant) -> Result<(), PushError> {
        let size = event.size();
        loop {
            let writable = self.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            {
                let mut state = self.state.lock();
                if state.closed {
                    self.ledger.dropped(DropReason::ShuttingDown, 1);
                    return Err(PushError::Closed);
                }
                if !state.fits(size, self.max_events, self.max_bytes) {
                    match self.when_full {
                        WhenFull::Block => {}
                        WhenFull::DropNewest => {
                            self.ledger.dropped(DropReason::QueueFull, 1);
                            return Err(PushError::Full);
                        }
                        WhenFull::DropOldest => {
                            while !state.fits(size, self.max_events, self.max_bytes) {
                                let Some(old) = state.events.pop_front() else {
                                    break;
                                };
                                let old_size = old.size();
                                state.bytes -= old_size;
                                self.ledger.queued_events.dec();
                                self.ledger.queued_bytes.dec_by(old_size as i64);
                                self.ledger.dropped(DropReason::QueueFull, 1);
                                old.finished(false);
                            }
                        }
                    }
                }
                if state.fits(size, self.max_events, self.max_bytes) {
                    state.events.push_back(event);
                    state.bytes += size;
                    self.ledger.queued_events.inc();
                    self.ledger.queued_bytes.inc_by(size as i64);
                    let wake = state.events.len() >= state.wake_at_events
                        || state.bytes >= state.wake_at_bytes;
                    drop(state);
                    if wake {
                        self.readable.notify_one();
                    }
                    return Ok(());
                }
            }
            if timeout_at(deadline, writable).await.is_err() {
                self.ledger.dropped(DropReason::QueueFull, 1);
                return Err(PushError::Full);
            }
        }
    }

    /// The next batch: waits for a first event, then up to `limits.timeout` for the batch to
    /// fill. Returns an empty batch only when the queue is closed and drained.
    pub async fn pop_batch(&self, limits: BatchLimits) -> Vec<Arc<Event>> {
        let max_events = limits.max_events.max(1);
        let mut linger_until: Option<Instant> = None;
        loop {
            let readable = self.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            {
                let mut state = self.state.lock();
                let now = Instant::now();
                if !state.events.is_empty() {
                    let full = state.events.len() >= max_events || state.bytes >= limits.max_bytes;
                    let waited = limits.timeout.is_zero() || linger_until.is_some_and(|t| now >= t);
                    if full || waited || state.closed {
                        let batch = self.take(&mut state, max_events, limits.max_bytes);
                        state.wake_at_events = 1;
                        state.wake_at_bytes = usize::MAX;
                        drop(state);
                        self.writable.notify_waiters();
                        return batch;
                    }
                    linger_until.get_or_insert(now + limits.timeout);
                    state.wake_at_events = max_events;
                    state.wake_at_bytes = limits.max_bytes;
                } else if state.closed {
                    return Vec::new();
                } else {
                    state.wake_at_events = 1;
                    state.wake_at_bytes = usize::MAX;
                }
            }
            match linger_until {
                Some(until) => {
                    let _ = timeout_at(until, readable).await;
                }
                None => readable.await,
            }
        }
    }

    fn take(&self, state: &mut State, max_events: usize, max_bytes: usize) -> Vec<Arc<Event>> {
        let mut batch = Vec::with_capacity(max_events.min(state.events.len()));
        let mut bytes = 0;
        while batch.len() < max_events {
            let Some(front) = state.events.front() else {
                break;
            };
            let size = front.size();
            if !batch.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            if let Some(event) = state.events.pop_front() {
                batch.push(event);
            }
        }
        state.bytes -= bytes;
        // Handing the batch to the driver moves it from queued to in flight, under the lock.
        self.ledger.queued_events.dec_by(batch.len() as i64);
        self.ledger.queued_bytes.dec_by(bytes as i64);
        self.ledger.in_flight.inc_by(batch.len() as i64);
        batch
    }

    /// Takes `event` if there is room now, counting it received; hands it back otherwise,
    /// counting nothing (the caller offers it elsewhere).
    pub fn try_push(&self, event: Arc<Event>) -> Result<(), Arc<Event>> {
        let size = event.size();
        let mut state = self.state.lock();
        if state.closed || !state.fits(size, self.max_events, self.max_bytes) {
            return Err(event);
        }
        state.events.push_back(event);
        state.bytes += size;
        self.ledger.received.inc();
        self.ledger.queued_events.inc();
        self.ledger.queued_bytes.inc_by(size as i64);
        Ok(())
    }

    /// Takes all of `events` if they all fit now, counting them received; takes none and counts
    /// nothing otherwise (the caller then offers them one by one, where the policy applies).
    /// A source hands over a whole read this way: one lock and one wake-up for the lot.
    pub fn try_push_all(&self, events: &[Arc<Event>]) -> bool {
        let size: usize = events.iter().map(|e| e.size()).sum();
        let mut state = self.state.lock();
        if state.closed
            || state.events.len() + events.len() > self.max_events
            || state.bytes + size > self.max_bytes
        {
            return false;
        }
        state.events.extend(events.iter().cloned());
        state.bytes += size;
        let count = events.len() as u64;
        self.ledger.received.inc_by(count);
        self.ledger.queued_events.inc_by(count as i64);
        self.ledger.queued_bytes.inc_by(size as i64);
        let wake = state.events.len() >= state.wake_at_events || state.bytes >= state.wake_at_bytes;
        drop(state);
        if wake {
            self.readable.notify_one();
        }
        true
    }

    /// Whatever is queued now, up to the limits, without waiting (possibly nothing).
    pub fn try_pop_batch(&self, limits: BatchLimits) -> Vec<Arc<Event>> {
        let mut state = self.state.lock();
        if state.events.is_empty() {
            return Vec::new();
        }
        let batch = self.take(&mut state, limits.max_events.max(1), limits.max_bytes);
        drop(state);
        self.writable.notify_waiters();
        batch
    }

    /// Refuses further pushes; wakes everyone so blocked producers fail and the consumer drains.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.readable.notify_one();
        self.writable.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.state.lock().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::event::{Attributes, EventId};
    use crate::ledger::{ComponentKind, Ledger};

    fn event(seq: u64, len: usize) -> Arc<Event> {
        Arc::new(Event::new(
            EventId { node: 1, seq },
            Arc::from("test"),
            Bytes::from(vec![b'x'; len]),
            Attributes::None,
        ))
    }

    fn queue(ledger: &Ledger, max_events: usize, when_full: WhenFull) -> MemoryQueue {
        MemoryQueue::new(
            max_events,
            usize::MAX,
            when_full,
            ledger.component("q", ComponentKind::Sink, "test"),
        )
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    const ALL: BatchLimits = BatchLimits {
        max_events: 100,
        max_bytes: usize::MAX,
        timeout: Duration::ZERO,
    };

    #[tokio::test]
    async fn a_read_is_taken_whole_or_not_at_all() {
        let ledger = Ledger::new();
        let q = queue(&ledger, 4, WhenFull::DropNewest);
        let read: Vec<_> = (0..3).map(|seq| event(seq, 10)).collect();
        assert!(q.try_push_all(&read), "three fit in four");
        assert!(
            !q.try_push_all(&read),
            "three more do not fit in the one left"
        );
        let stats = ledger.stats().components.remove(0);
        assert_eq!(
            (
                stats.received,
                stats.queued,
                stats.dropped.values().sum::<u64>()
            ),
            (3, 3, 0),
            "the refused read is not counted: its events are offered again one by one"
        );
        let batch = q.pop_batch(ALL).await;
        assert_eq!(
            batch.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    #[tokio::test]
    async fn full_queue_drops_oldest_and_counts_it() {
        let ledger = Ledger::new();
        let q = queue(&ledger, 2, WhenFull::DropOldest);
        for seq in 0..3 {
            q.push(event(seq, 1), soon())
                .await
                .expect("drop_oldest always takes the new event");
        }
        let batch = q.pop_batch(ALL).await;
        assert_eq!(
            batch.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let stats = ledger.stats().components.remove(0);
        assert_eq!(
            (
                stats.received,
                stats.dropped.get("queue_full").copied(),
                stats.in_flight
            ),
            (3, Some(1), 2)
        );
        assert!(stats.balanced);
    }

    #[tokio::test]
    async fn full_queue_drops_newest_and_counts_it() {
        let ledger = Ledger::new();
        let q = queue(&ledger, 1, WhenFull::DropNewest);
        q.push(event(0, 1), soon()).await.expect("room for one");
        assert_eq!(q.push(event(1, 1), soon()).await, Err(PushError::Full));
        assert_eq!(q.pop_batch(ALL).await[0].id.seq, 0);
        assert!(ledger.stats().balanced);
    }

    #[tokio::test]
    async fn blocked_producer_waits_for_room_then_times_out() {
        let ledger = Ledger::new();
        let q = Arc::new(queue(&ledger, 1, WhenFull::Block));
        q.push(event(0, 1), soon()).await.expect("room for one");
        assert_eq!(
            q.push(event(1, 1), soon()).await,
            Err(PushError::Full),
            "no room until the deadline"
        );
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move {
                q.push(event(2, 1), Instant::now() + Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(q.pop_batch(ALL).await.len(), 1);
        waiter.await.expect("task").expect("room was made");
        assert_eq!(q.len(), 1);
        let stats = ledger.stats().components.remove(0);
        assert_eq!(
            (
                stats.received,
                stats.dropped_total,
                stats.queued,
                stats.in_flight
            ),
            (3, 1, 1, 1)
        );
    }

    #[tokio::test]
    async fn an_oversized_event_is_taken_when_the_queue_is_empty() {
        let ledger = Ledger::new();
        let q = MemoryQueue::new(
            10,
            4,
            WhenFull::Block,
            ledger.component("q", ComponentKind::Sink, "test"),
        );
        q.push(event(0, 100), soon())
            .await
            .expect("an empty queue takes anything");
        assert_eq!(q.push(event(1, 1), soon()).await, Err(PushError::Full));
    }

    #[tokio::test]
    async fn batches_fill_up_to_limits_and_linger_for_more() {
        let ledger = Ledger::new();
        let q = Arc::new(queue(&ledger, 100, WhenFull::Block));
        for seq in 0..5 {
            q.push(event(seq, 10), soon()).await.expect("room");
        }
        let two = BatchLimits {
            max_events: 2,
            max_bytes: usize::MAX,
            timeout: Duration::from_secs(10),
        };
        assert_eq!(q.pop_batch(two).await.len(), 2, "a full batch goes at once");
        let by_bytes = BatchLimits {
            max_events: 100,
            max_bytes: 25,
            timeout: Duration::from_secs(10),
        };
        assert_eq!(
            q.pop_batch(by_bytes).await.len(),
            2,
            "a batch stops before passing max_bytes"
        );
        let linger = BatchLimits {
            max_events: 2,
            max_bytes: usize::MAX,
            timeout: Duration::from_secs(10),
        };
        let producer = {
            let q = q.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                q.push(event(9, 10), soon()).await
            })
        };
        let batch = q.pop_batch(linger).await;
        assert_eq!(
            batch.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
            vec![4, 9],
            "waited for the late event"
        );
        producer.await.expect("task").expect("room");
    }

    #[tokio::test]
    async fn close_fails_producers_and_drains_the_consumer() {
        let ledger = Ledger::new();
        let q = queue(&ledger, 10, WhenFull::Block);
        q.push(event(0, 1), soon()).await.expect("room");
        q.close();
        assert_eq!(q.push(event(1, 1), soon()).await, Err(PushError::Closed));
        let linger = BatchLimits {
            max_events: 10,
            max_bytes: usize::MAX,
            timeout: Duration::from_secs(60),
        };
        assert_eq!(
            q.pop_batch(linger).await.len(),
            1,
            "closing ends the linger"
        );
        assert!(q.pop_batch(linger).await.is_empty());
        let stats = ledger.stats().components.remove(0);
        assert_eq!(stats.dropped.get("shutting_down"), Some(&1));
    }

    #[tokio::test]
    async fn an_abandoned_push_is_counted_not_lost() {
        let ledger = Ledger::new();
        let q = queue(&ledger, 1, WhenFull::Block);
        q.push(event(0, 1), soon()).await.expect("room for one");
        let waiting = q.push(event(1, 1), Instant::now() + Duration::from_secs(60));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting)
                .await
                .is_err(),
            "it waits for room"
        );
        let stats = ledger.stats().components.remove(0);
        assert_eq!(
            (stats.received, stats.dropped.get("shutting_down").copied()),
            (2, Some(1))
        );
        assert!(stats.balanced, "{stats:?}");
    }
}
