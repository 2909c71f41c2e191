//! The unit of data that moves through the relay.
//!
//! An [`Event`] is the payload bytes as received (a `Bytes` slice of the receive buffer, never
//! copied on the way through) plus small metadata: a stable id, the source's name, the receive
//! time and source attributes (an HTTP request's method, path, query and headers; a peer
//! address). Events are shared as `Arc<Event>`: one that fans out to several sinks exists once.
//!
//! Ids are `node id + sequence`. The sequence of a process starts at the Unix time of its start
//! in nanoseconds and counts up by one per event, so ids from one node never repeat across
//! restarts unless the relay sustains more than one event per nanosecond.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// `node-sequence`, printed as hex (`0000abcd-17a2f3c4d5e6f701`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    pub node: u32,
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{:016x}", self.node, self.seq)
    }
}

/// Hands out ids for one node; shared by every source of the process.
pub struct IdGenerator {
    node: u32,
    next: AtomicU64,
}

impl IdGenerator {
    pub fn new(node: u32) -> Self {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            node,
            next: AtomicU64::new(start),
        }
    }

    pub fn next(&self) -> EventId {
        EventId {
            node: self.node,
            seq: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// What the source knew about where an event came from.
#[derive(Debug, Default)]
pub enum Attributes {
    #[default]
    None,
    Peer(SocketAddr),
    Http(Box<HttpRequest>),
}

/// The parts of an HTTP request needed to replay it.
#[derive(Debug)]
pub struct HttpRequest {
    pub method: Method,
    /// Path and query only (`/v1/items?id=3`).
    pub uri: Uri,
    /// As received, less the `Authorization` header when the source itself consumed it.
    pub headers: HeaderMap,
    pub peer: Option<SocketAddr>,
}

impl HttpRequest {
    fn approximate_size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        self.uri.to_string().len() + headers + 64
    }
}

/// An answer the destination gave, carried back to a caller that waits for it
/// (`passthrough_below_rate`).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn status(status: StatusCode) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }
}

pub struct Event {
    pub id: EventId,
    pub source: Arc<str>,
    pub received_at: SystemTime,
    pub payload: Bytes,
    pub attributes: Attributes,
    /// Set when the producer waits for the destination's own answer. The first sink to get a
    /// final answer sends it; if the event is dropped or fans out to no sink that answers, the
    /// sender is dropped and the waiting source falls back to its configured status.
    reply: Mutex<Option<oneshot::Sender<Reply>>>,
    /// Set when the producer waits until every sink delivered it (`ack = "delivered"`).
    delivery: Mutex<Option<Arc<DeliveryTracker>>>,
    /// Set (before the event is shared) when `reply` or `delivery` is: the hot path of an event
    /// nobody waits on reads this flag instead of taking two locks.
    waited_on: AtomicBool,
}

/// One event's progress through the sinks that took it, for a producer that waits until all of
/// them delivered it. Each sink reports once, delivered or not; the waiter learns the outcome
/// when the last one has.
pub struct DeliveryTracker {
    remaining: AtomicUsize,
    all_delivered: AtomicBool,
    done: Mutex<Option<oneshot::Sender<bool>>>,
}

impl DeliveryTracker {
    /// A tracker waiting for `sinks` reports; the receiver resolves to whether all delivered.
    pub fn new(sinks: usize) -> (Arc<Self>, oneshot::Receiver<bool>) {
        let (tx, rx) = oneshot::channel();
        let tracker = Arc::new(Self {
            remaining: AtomicUsize::new(sinks),
            all_delivered: AtomicBool::new(true),
            done: Mutex::new(Some(tx)),
        });
        if sinks == 0 {
            tracker.finish();
        }
        (tracker, rx)
    }

    fn report(&self, delivered: bool) {
        if !delivered {
            self.all_delivered.store(false, Ordering::SeqCst);
        }
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.finish();
        }
    }

    fn finish(&self) {
        if let Some(tx) = self.done.lock().take() {
            let _ = tx.send(self.all_delivered.load(Ordering::SeqCst));
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

impl Event {
    pub fn new(id: EventId, source: Arc<str>, payload: Bytes, attributes: Attributes) -> Self {
        Self::new_at(id, source, payload, attributes, SystemTime::now())
    }

    /// An event received at `received_at` (a source reading many events at once reads the
    /// clock once).
    pub fn new_at(
        id: EventId,
        source: Arc<str>,
        payload: Bytes,
        attributes: Attributes,
        received_at: SystemTime,
    ) -> Self {
        Self {
            id,
            source,
            received_at,
            payload,
            attributes,
            reply: Mutex::new(None),
            delivery: Mutex::new(None),
            waited_on: AtomicBool::new(false),
        }
    }

    /// Asks to be told when every sink that takes this event has finished with it.
    pub fn track_delivery(&self, tracker: Arc<DeliveryTracker>) {
        *self.delivery.lock() = Some(tracker);
        self.waited_on.store(true, Ordering::Release);
    }

    /// A sink has finished with this event: delivered, or given up on (dropped).
    pub fn finished(&self, delivered: bool) {
        if !self.waited_on.load(Ordering::Acquire) {
            return;
        }
        if let Some(tracker) = self.delivery.lock().as_ref() {
            tracker.report(delivered);
        }
    }

    /// Whether a producer waits on this event (a passthrough answer or its delivery).
    pub fn has_waiters(&self) -> bool {
        self.waited_on.load(Ordering::Acquire)
            && (self.reply.lock().is_some() || self.delivery.lock().is_some())
    }

    /// Asks for the destination's answer; the returned receiver resolves when a sink replies
    /// (or fails when no sink will).
    pub fn want_reply(&self) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        *self.reply.lock() = Some(tx);
        self.waited_on.store(true, Ordering::Release);
        rx
    }

    /// Whether a caller is waiting for the destination's answer.
    pub fn wants_reply(&self) -> bool {
        self.waited_on.load(Ordering::Acquire) && self.reply.lock().is_some()
    }

    /// Sends the destination's answer to a waiting caller, if any (the first answer wins).
    pub fn send_reply(&self, reply: Reply) {
        if !self.waited_on.load(Ordering::Acquire) {
            return;
        }
        if let Some(tx) = self.reply.lock().take() {
            let _ = tx.send(reply);
        }
    }

    /// Bytes this event holds, for queue bounds: the payload and its attributes.
    pub fn size(&self) -> usize {
        let attributes = match &self.attributes {
            Attributes::Http(request) => request.approximate_size(),
            _ => 0,
        };
        self.payload.len() + attributes
    }

    pub fn http(&self) -> Option<&HttpRequest> {
        match &self.attributes {
            Attributes::Http(request) => Some(request),
            _ => None,
        }
    }
}
